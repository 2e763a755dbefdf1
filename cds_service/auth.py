"""Who may call: CDS Hooks 2.0 client authentication with signed JWTs (PyJWT does the crypto).

Trusted issuers come from the JSON file named by CDS_TRUSTED_ISSUERS:

    {"https://sandbox.cds-hooks.org": {"jwks": {"keys": [...]}},
     "https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks.json",
                                 "jku_allowlist": ["https://ehr.example.org/jwks.json"]}}

A token's `jku` header is honoured only when it is on its issuer's allowlist; otherwise the
issuer's configured keys are used. Keys from a URL are cached and refreshed when a token
names an unknown `kid`. A `jti` seen before (within the token's life) is refused.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests
from jwt import PyJWK

ACCEPTED_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
JWKS_REFRESH_MIN_SECONDS = 30  # an unknown kid refetches a JWKS at most this often
JWKS_FETCH_TIMEOUT = 3


class AuthError(Exception):
    """The request is not authenticated; `reason` is safe to show the caller."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrustConfigError(ValueError):
    pass


@dataclass
class Issuer:
    iss: str
    keys: dict[str, PyJWK] = field(default_factory=dict)
    jwks_url: str | None = None
    jku_allowlist: tuple[str, ...] = ()
    fetched_at: float = 0.0


def _keys_from_jwks(jwks: dict, source: str) -> dict[str, PyJWK]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise TrustConfigError(f"{source}: a JWKS must be an object with a 'keys' array")
    keys = {}
    for raw in jwks["keys"]:
        if not isinstance(raw, dict) or not raw.get("kid"):
            raise TrustConfigError(f"{source}: every key needs a 'kid'")
        try:
            keys[raw["kid"]] = PyJWK(raw)
        except jwt.PyJWTError as error:
            raise TrustConfigError(f"{source}: key {raw.get('kid')} is not usable ({error})") from error
    return keys


def load_trusted_issuers(path: Path) -> dict[str, Issuer]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrustConfigError(f"CDS_TRUSTED_ISSUERS: cannot read {path}: {error}") from error
    if not isinstance(document, dict) or not document:
        raise TrustConfigError(f"{path}: expected an object of issuers, e.g. {{\"<iss>\": {{\"jwks\": {{...}}}}}}")
    issuers = {}
    for iss, entry in document.items():
        if not isinstance(entry, dict) or ("jwks" in entry) == ("jwks_url" in entry):
            raise TrustConfigError(f"{path}: issuer {iss} needs exactly one of 'jwks' or 'jwks_url'")
        allowlist = entry.get("jku_allowlist", [])
        if not isinstance(allowlist, list) or not all(isinstance(u, str) for u in allowlist):
            raise TrustConfigError(f"{path}: issuer {iss}: 'jku_allowlist' must be a list of URLs")
        issuer = Issuer(iss=iss, jwks_url=entry.get("jwks_url"), jku_allowlist=tuple(allowlist))
        if "jwks" in entry:
            issuer.keys = _keys_from_jwks(entry["jwks"], f"{path}: issuer {iss}")
        issuers[iss] = issuer
    return issuers


class Authenticator:
    def __init__(self, issuers: dict[str, Issuer], leeway_seconds: float, replay_guard,
                 fetch=None):
        self.issuers = issuers
        self.leeway = leeway_seconds
        self.replay_guard = replay_guard  # callable(iss, jti, exp) -> True when first seen
        self._fetch = fetch or self._fetch_jwks
        self._lock = threading.Lock()
        self._url_keys: dict[str, tuple[float, dict[str, PyJWK]]] = {}

    @staticmethod
    def _fetch_jwks(url: str) -> dict:
        reply = requests.get(url, timeout=JWKS_FETCH_TIMEOUT)
        reply.raise_for_status()
        return reply.json()

    def _keys_at(self, url: str, kid: str) -> dict[str, PyJWK]:
        with self._lock:
            fetched_at, keys = self._url_keys.get(url, (0.0, {}))
            stale = kid not in keys and time.monotonic() - fetched_at > JWKS_REFRESH_MIN_SECONDS
        if stale or not keys:
            try:
                keys = _keys_from_jwks(self._fetch(url), url)
            except (requests.RequestException, ValueError, TrustConfigError) as error:
                raise AuthError(f"the signing keys at {url} could not be read") from error
            with self._lock:
                self._url_keys[url] = (time.monotonic(), keys)
        return keys

    def _key_for(self, issuer: Issuer, header: dict) -> PyJWK:
        kid = header.get("kid")
        jku = header.get("jku")
        if jku and jku in issuer.jku_allowlist:
            keys = self._keys_at(jku, kid)
        elif issuer.jwks_url:
            keys = self._keys_at(issuer.jwks_url, kid)
        else:
            keys = issuer.keys
        key = keys.get(kid)
        if key is None:
            raise AuthError(f"no trusted key with kid '{kid}' for issuer {issuer.iss}")
        return key

    def verify(self, authorization: str | None, audiences: list[str]) -> dict:
        """The token's claims, or AuthError saying what is wrong."""
        if not authorization:
            raise AuthError("missing Authorization header (expected: Bearer <JWT>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <JWT>'")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise AuthError(f"signing algorithm '{algorithm}' is not accepted (use one of {', '.join(ACCEPTED_ALGORITHMS)})")
        if not header.get("kid"):
            raise AuthError("the JWT header has no 'kid'")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError(f"issuer '{iss}' is not trusted")
        key = self._key_for(issuer, header)
        try:
            claims = jwt.decode(
                token, key=key.key, algorithms=[algorithm], audience=audiences, issuer=iss, leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("the token's aud is not this endpoint's URL") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token's iat or nbf is in the future") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"the token has no '{error.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise AuthError(f"the token is not valid ({type(error).__name__})") from None
        except (TypeError, ValueError):
            # e.g. an RS384 header naming an EC key: the key cannot check this signature
            raise AuthError("the token's signature does not verify with the key its kid names") from None
        if not self.replay_guard(iss, str(claims["jti"]), float(claims["exp"])):
            raise AuthError("this token (jti) was already used")
        return claims


def sign_token(issuer: str, private_key_pem: bytes, audience: str, kid: str, algorithm: str = "ES384",
               lifetime_seconds: int = 300, subject: str | None = None, jku: str | None = None) -> str:
    """A client JWT as a CDS client would send it (for `cds-service token`, the demo and tests)."""
    import uuid

    now = int(time.time())
    claims = {"iss": issuer, "sub": subject or issuer, "aud": audience, "iat": now, "exp": now + lifetime_seconds,
              "jti": str(uuid.uuid4())}
    headers = {"kid": kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, private_key_pem, algorithm=algorithm, headers=headers)


def generate_key_pair(kid: str, algorithm: str = "ES384") -> tuple[bytes, dict]:
    """(private key PEM, public JWK) for a new client identity."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm.startswith("ES"):
        curve = ec.SECP384R1() if algorithm == "ES384" else ec.SECP256R1()
        private = ec.generate_private_key(curve)
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem, jwk
