"""Who may call: CDS Hooks 2.0 client authentication with signed JWTs (PyJWT does the crypto).

Trusted issuers come from the JSON file named by CDS_TRUSTED_ISSUERS:

    {"https://sandbox.cds-hooks.org": {"jwks": {"keys": [...]}},
     "https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks.json",
                                 "jku_allowlist": ["https://ehr.example.org/jwks.json"]}}

A token's `jku` header is honoured only when it is on its issuer's allowlist; otherwise the
issuer's configured keys are used. Keys from a URL are cached; a token naming an unknown `kid`
refetches them at most every JWKS_REFRESH_MIN_SECONDS, and a URL that fails is not tried again
before a growing back-off, so unauthenticated requests cannot make the service hammer (or wait
on) a slow key server. A `jti` seen before (within the token's life) is refused, and so is a
token meant to live longer than the configured maximum.

Reasons are shown to the caller in the JSON body only (token fields quoted with `_shown`); the
`WWW-Authenticate` header never carries anything taken from the token.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK

from ..fhir.outbound import Outbound, OutboundError, describe_host, is_base_url

ACCEPTED_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
JWKS_REFRESH_MIN_SECONDS = 30  # an unknown kid refetches a JWKS at most this often
JWKS_FETCH_SECONDS = 3  # the whole fetch, on the socket
JWKS_MAX_BYTES = 1024 * 1024
JWKS_BACKOFF_SECONDS = (5, 300)  # after a failed fetch: first pause, doubling up to the second


def _shown(value, limit: int = 80) -> str:
    """A token field fit to quote in an answer or a log: JSON-escaped (no CR/LF/NUL) and short."""
    text = json.dumps(
        value if isinstance(value, (str, int, float, bool, type(None))) else str(value), ensure_ascii=True
    )
    return text if len(text) <= limit else text[:limit] + '..."'


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
        raise TrustConfigError(f'{path}: expected an object of issuers, e.g. {{"<iss>": {{"jwks": {{...}}}}}}')
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


@dataclass
class _UrlKeys:
    """The keys read from one JWKS URL, and whether that URL may be fetched again yet."""

    keys: dict[str, PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # time.monotonic() of the last attempt
    failures: int = 0  # consecutive failed fetches
    fetching: threading.Lock = field(default_factory=threading.Lock)  # one fetch per URL at a time

    def may_fetch(self) -> bool:
        if self.failures:
            first, most = JWKS_BACKOFF_SECONDS
            pause = min(most, first * 2 ** (self.failures - 1))
        else:
            pause = JWKS_REFRESH_MIN_SECONDS  # a kid missing from fresh keys is not worth a refetch yet
        return time.monotonic() >= self.fetched_at + pause


class Authenticator:
    def __init__(
        self,
        issuers: dict[str, Issuer],
        leeway_seconds: float,
        replay_guard,
        fetch=None,
        max_lifetime_seconds: float = 300.0,
    ):
        self.issuers = issuers
        self.leeway = leeway_seconds
        self.max_lifetime = max_lifetime_seconds
        self.replay_guard = replay_guard  # callable(iss, jti, exp) -> True when first seen
        self._fetch = fetch or self._fetch_jwks
        self._outbound: Outbound | None = None
        self._lock = threading.Lock()
        self._url_keys: dict[str, _UrlKeys] = {}

    def _fetch_jwks(self, url: str) -> dict:
        with self._lock:
            self._outbound = self._outbound or Outbound(pool_maxsize=2)
        try:
            reply = self._outbound.get(
                url, {"Accept": "application/json"}, time.monotonic() + JWKS_FETCH_SECONDS, JWKS_MAX_BYTES
            )
        except OutboundError as error:
            raise ValueError(f"the key server {error}") from None
        if reply.status != 200:  # a redirect included: keys come only from the configured URL
            raise ValueError(f"the key server answered HTTP {reply.status}")
        return json.loads(reply.body)

    def _keys_at(self, url: str, kid: str) -> dict[str, PyJWK]:
        with self._lock:
            cached = self._url_keys.setdefault(url, _UrlKeys())
        if kid not in cached.keys and cached.may_fetch():
            with cached.fetching:
                if kid not in cached.keys and cached.may_fetch():  # not fetched while this one waited
                    cached.fetched_at = time.monotonic()
                    try:
                        cached.keys = _keys_from_jwks(self._fetch(url), url)
                        cached.failures = 0
                    except (ValueError, TrustConfigError, RecursionError):
                        cached.failures += 1
        if cached.failures and not cached.keys:
            raise AuthError(f"the signing keys at {describe_host(url)} could not be read")
        return cached.keys

    def _key_for(self, issuer: Issuer, header: dict) -> PyJWK:
        kid, jku = str(header["kid"]), header.get("jku")  # verify() checked both are strings
        if jku and jku in issuer.jku_allowlist:
            keys = self._keys_at(jku, kid)
        elif issuer.jwks_url:
            keys = self._keys_at(issuer.jwks_url, kid)
        else:
            keys = issuer.keys
        key = keys.get(kid)
        if key is None:
            raise AuthError(f"no trusted key with kid {_shown(kid)} for issuer {_shown(issuer.iss)}")
        return key

    def verify(self, authorization: str | None, audiences: list[str], shown_audience: str | None = None) -> dict:
        """The token's claims, or AuthError saying what is wrong. `shown_audience`: the one URL a
        wrong-audience answer may name (the public one); the others (internal addresses) never are."""
        if not authorization:
            raise AuthError("missing Authorization header (expected: Bearer <JWT>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <JWT>'")
        token = token.strip()
        try:
            # one parse for the header and the issuer; the signature is checked below with its key
            unverified_token = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = unverified_token["header"], unverified_token["payload"]
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a JWT") from None
        except (RecursionError, UnicodeError, TypeError):
            raise AuthError("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise AuthError(
                f"signing algorithm {_shown(algorithm)} is not accepted (use one of {', '.join(ACCEPTED_ALGORITHMS)})"
            )
        if not header.get("kid") or not isinstance(header["kid"], str):
            raise AuthError("the JWT header has no 'kid' string")
        if not isinstance(header.get("jku", ""), str):
            raise AuthError("the JWT header's 'jku' is not a string")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError(f"issuer {_shown(iss)} is not trusted")
        key = self._key_for(issuer, header)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=audiences,
                issuer=iss,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired") from None
        except jwt.InvalidAudienceError:
            expected = f" (expected {shown_audience})" if shown_audience else ""
            raise AuthError(f"the token's aud is not this endpoint's URL{expected}") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token's iat or nbf is in the future") from None
        except jwt.MissingRequiredClaimError as error:
            raise AuthError(f"the token has no '{error.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("the token's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise AuthError(f"the token is not valid ({type(error).__name__})") from None
        except OverflowError:  # an exp or iat of 1e400
            raise AuthError("the token's exp, iat or nbf is not a usable time") from None
        except (TypeError, ValueError):
            # e.g. an RS384 header naming an EC key: the key cannot check this signature
            raise AuthError("the token's signature does not verify with the key its kid names") from None
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self.max_lifetime + self.leeway:
            raise AuthError(
                f"the token is meant to live {lifetime:.0f} s (exp - iat); at most "
                f"{self.max_lifetime:.0f} s are accepted (CDS_JWT_MAX_LIFETIME_SECONDS)"
            )
        if not self.replay_guard(iss, str(claims["jti"]), float(claims["exp"])):
            raise AuthError("this token (jti) was already used")
        return claims


def bound_base_urls(host: str, port: int) -> list[str]:
    """The base URLs a server bound to host:port is called at, as far as its address says: a
    loopback address also by `localhost`; a wildcard address (0.0.0.0, ::) says nothing."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return []
    loopback = {
        "127.0.0.1": ["127.0.0.1", "localhost"],
        "localhost": ["127.0.0.1", "localhost"],
        "::1": ["[::1]", "localhost"],
    }
    names = loopback.get(host, [f"[{host}]" if ":" in host else host])
    return [f"http://{name}:{port}" for name in names]


def is_loopback(base_url: str) -> bool:
    """True for a base URL on this machine's loopback (127.0.0.1, ::1, localhost): nothing internal
    to hide when an answer names it."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forwarded_base(headers) -> str | None:
    """The base URL a reverse proxy says the client called (RFC 7239 Forwarded, else X-Forwarded-Proto
    and -Host); only for CDS_TRUST_PROXY, when the proxy sets these headers itself."""
    forwarded = headers.get("Forwarded", "")
    if forwarded:
        first = forwarded.split(",")[0]
        pairs = dict(part.strip().split("=", 1) for part in first.split(";") if "=" in part)
        proto, host = pairs.get("proto", "").strip('"'), pairs.get("host", "").strip('"')
    else:
        proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        host = headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    base = f"{proto.lower()}://{host}"
    return base if proto and host and "/" not in host and is_base_url(base) else None


def sign_token(
    issuer: str,
    private_key_pem: bytes,
    audience: str,
    kid: str,
    algorithm: str = "ES384",
    lifetime_seconds: int = 300,
    subject: str | None = None,
    jku: str | None = None,
) -> str:
    """A client JWT as a CDS client would send it (for `cds-service token`, the demo and tests)."""
    import uuid

    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject or issuer,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, private_key_pem, algorithm=algorithm, headers=headers)


def generate_key_pair(kid: str, algorithm: str = "ES384") -> tuple[bytes, dict]:
    """(private key PEM, public JWK) for a new client identity."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm.startswith("ES"):
        curve = ec.SECP384R1() if algorithm == "ES384" else ec.SECP256R1()
        private = ec.generate_private_key(curve)
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, jwk
