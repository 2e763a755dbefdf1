"""Only trusted EHRs get in: CDS Hooks 2.0 JWT client authentication."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import jwt
import pytest
from apps import app_settings

from cds_service.cli import fixtures
from cds_service.web.app import create_app
from cds_service.web.auth import TrustConfigError, generate_key_pair, load_trusted_issuers, sign_token
from cds_service.web.config import Settings

SELECT = "/cds-services/spine-mri-order-select"
BASE = "http://localhost"  # where Flask's test client sends requests; passed to create_app as serve would
URL = BASE + SELECT
SANDBOX = "https://sandbox.cds-hooks.org"


@pytest.fixture(scope="module")
def keys():
    es_pem, es_jwk = generate_key_pair("ehr-es384", "ES384")
    rs_pem, rs_jwk = generate_key_pair("ehr-rs384", "RS384")
    sb_pem, sb_jwk = generate_key_pair("sandbox-like", "ES384")
    return {"es": es_pem, "rs": rs_pem, "sandbox": sb_pem, "jwks": [es_jwk, rs_jwk], "sandbox_jwk": sb_jwk}


@pytest.fixture
def trust_file(tmp_path, keys, captured_sandbox):
    sandbox_keys = json.loads((fixtures.FIXTURES_DIR / "sandbox" / "jwks.json").read_text())["keys"]
    path = tmp_path / "trusted-issuers.json"
    path.write_text(
        json.dumps(
            {
                "https://ehr.example.org": {"jwks": {"keys": keys["jwks"]}},
                # the real sandbox's public keys (from its jwks.json) plus one of ours under its issuer,
                # since its private key is not ours to sign with
                SANDBOX: {"jwks": {"keys": [*sandbox_keys, keys["sandbox_jwk"]]}},
            }
        )
    )
    return path


@pytest.fixture
def client(tmp_path, trust_file):
    settings = app_settings(
        tmp_path,
        max_body_bytes=2 * 1024 * 1024,
        trusted_issuers=trust_file,
    )
    return create_app(settings, [BASE]).test_client()


def body():
    return fixtures.hook_request("lbp-acute-simple", "order-select")


def post(client, token, path=SELECT, payload=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(path, json=payload if payload is not None else body(), headers=headers)


def claims(**overrides):
    now = int(time.time())
    base = {
        "iss": "https://ehr.example.org",
        "sub": "ehr",
        "aud": URL,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(keys, key="es", alg="ES384", kid="ehr-es384", headers=None, **overrides):
    return jwt.encode(claims(**overrides), keys[key], algorithm=alg, headers={"kid": kid, **(headers or {})})


def test_valid_es384_and_rs384_tokens_get_in(client, keys):
    assert post(client, token(keys)).status_code == 200
    assert post(client, token(keys, key="rs", alg="RS384", kid="ehr-rs384")).status_code == 200


def test_missing_token_is_401_with_www_authenticate(client):
    reply = post(client, None)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization" in reply.get_json()["error"]


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda k: token(k, aud="https://elsewhere.example/cds-services/spine-mri-order-select"), "aud"),
        (lambda k: token(k, exp=int(time.time()) - 120, iat=int(time.time()) - 400), "expired"),
        (lambda k: token(k, iss="https://stranger.example"), "not trusted"),
        (lambda k: token(k, kid="unknown-kid"), "kid"),
        (lambda k: token(k, jti=None), "jti"),
        (lambda k: token(k, key="rs", alg="RS384", kid="ehr-es384"), "signature"),
        (lambda k: jwt.encode(claims(), "shared-secret", algorithm="HS256", headers={"kid": "ehr-es384"}), "HS256"),
        (lambda k: jwt.encode(claims(), None, algorithm="none", headers={"kid": "ehr-es384"}), "none"),
        (lambda k: "not-a-jwt", "not a JWT"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(client, keys, make, needle):
    reply = post(client, make(keys))
    assert reply.status_code == 401
    assert needle in reply.get_json()["error"]


def test_replayed_jti_is_refused(client, keys):
    same = token(keys)
    assert post(client, same).status_code == 200
    reply = post(client, same)
    assert reply.status_code == 401 and "already used" in reply.get_json()["error"]


def test_clock_leeway_accepts_iat_half_a_second_ahead(client, keys):
    ahead = int(time.time()) + 1  # the sandbox rounds iat and can be up to 0.5 s ahead
    assert post(client, token(keys, iat=ahead)).status_code == 200
    far = int(time.time()) + 120
    assert post(client, token(keys, iat=far)).status_code == 401


def test_sandbox_shaped_token_with_unlisted_jku_uses_configured_keys(client, keys):
    shaped = sign_token(SANDBOX, keys["sandbox"], URL, "sandbox-like", "ES384", jku=f"{SANDBOX}/.well-known/jwks.json")
    assert post(client, shaped).status_code == 200


def test_feedback_needs_a_token_for_its_own_url(client, keys, captured_sandbox):
    path = SELECT + "/feedback"
    assert post(client, None, path, captured_sandbox["feedback"]).status_code == 401
    wrong_aud = token(keys)  # aud is the hook URL, not the feedback URL
    assert post(client, wrong_aud, path, captured_sandbox["feedback"]).status_code == 401
    right = token(keys, aud="http://localhost" + path)
    # authenticated; then refused as a card this service never issued (the sandbox capture's card)
    assert post(client, right, path, captured_sandbox["feedback"]).status_code == 400


def test_discovery_and_health_stay_open(client):
    assert client.get("/cds-services").status_code == 200
    assert client.get("/healthz").get_json()["authentication"] == "on"


def test_refused_request_changes_nothing(client, keys, tmp_path):
    reply = post(
        client,
        None,
        SELECT + "/feedback",
        {
            "feedback": [
                {
                    "card": "x",
                    "outcome": "accepted",
                    "acceptedSuggestions": [],
                    "outcomeTimestamp": "2026-11-22T00:00:00Z",
                }
            ]
        },
    )
    assert reply.status_code == 401
    import sqlite3

    rows = sqlite3.connect(tmp_path / "f.sqlite3").execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    assert rows == 0


def test_jku_on_the_allowlist_is_fetched_and_cached(tmp_path, keys):
    from cds_service.web.auth import Authenticator

    jku = "https://ehr.example.org/jwks.json"
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"https://ehr.example.org": {"jwks": {"keys": []}, "jku_allowlist": [jku]}}))
    fetched = []

    def fetch(url):
        fetched.append(url)
        return {"keys": keys["jwks"]}

    seen = set()
    auth = Authenticator(
        load_trusted_issuers(path), 5, lambda i, j, e: (i, j) not in seen and not seen.add((i, j)), fetch=fetch
    )
    for _ in range(3):
        auth.verify("Bearer " + token(keys, headers={"jku": jku}), [URL])
    assert fetched == [jku]


def test_trust_file_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"https://x": {"jwks": {"keys": []}, "jwks_url": "https://x/j"}}))
    with pytest.raises(TrustConfigError, match="exactly one"):
        load_trusted_issuers(bad)


def test_serve_refuses_to_start_without_trust_or_switch(monkeypatch, capsys):
    from cds_service.cli.main import main

    monkeypatch.delenv("CDS_TRUSTED_ISSUERS", raising=False)
    monkeypatch.delenv("CDS_ALLOW_UNAUTHENTICATED", raising=False)
    assert main(["serve", "--port", "1"]) == 2
    assert "CDS_TRUSTED_ISSUERS" in capsys.readouterr().err


def test_token_command_signs_a_token_the_service_accepts(tmp_path, capsys, monkeypatch):
    from cds_service.cli.main import main

    assert main(["keygen", "--issuer", "https://ehr.example.org", "--out", str(tmp_path), "--kid", "k1"]) == 0
    capsys.readouterr()
    assert main(["token", "--issuer", "https://ehr.example.org", "--key", str(tmp_path / "k1.pem"), "--aud", URL]) == 0
    printed = capsys.readouterr().out.strip()
    settings = app_settings(
        tmp_path,
        trusted_issuers=tmp_path / "trusted-issuers.json",
    )
    assert post(create_app(settings, [BASE]).test_client(), printed).status_code == 200


def test_jwks_url_is_refetched_when_a_token_names_an_unknown_kid(tmp_path, keys):
    from cds_service.web import auth as auth_module
    from cds_service.web.auth import Authenticator

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks.json"}}))
    served = {"keys": [keys["jwks"][1]]}  # only the RSA key at first: the EHR rotates in its EC key later
    fetched = []

    def fetch(url):
        fetched.append(url)
        return served

    seen = set()
    auth = Authenticator(
        load_trusted_issuers(path), 5, lambda i, j, e: (i, j) not in seen and not seen.add((i, j)), fetch=fetch
    )
    auth.verify("Bearer " + token(keys, key="rs", alg="RS384", kid="ehr-rs384"), [URL])
    served = {"keys": keys["jwks"]}
    auth_module.JWKS_REFRESH_MIN_SECONDS, saved = 0, auth_module.JWKS_REFRESH_MIN_SECONDS
    try:
        auth.verify("Bearer " + token(keys), [URL])  # ES384 kid unknown until the refetch
    finally:
        auth_module.JWKS_REFRESH_MIN_SECONDS = saved
    assert len(fetched) == 2


def test_cors_allows_configured_origins(tmp_path):
    settings = app_settings(
        tmp_path,
        max_body_bytes=10**6,
        cors_origins="https://sandbox.cds-hooks.org, https://ehr.example.org",
        allow_unauthenticated=True,
    )
    client = create_app(settings).test_client()
    for origin in ("https://sandbox.cds-hooks.org", "https://ehr.example.org"):
        reply = client.options(SELECT, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert reply.headers.get("Access-Control-Allow-Origin") == origin
    other = client.options(SELECT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.headers.get("Access-Control-Allow-Origin") is None
    assert "Origin" in other.headers.get("Vary", "")  # a cache must not hand one origin's answer to another


# ------------------------------------------------------------------ which aud is accepted


def test_401_names_the_audience_expected(client, keys):
    reply = post(client, token(keys, aud="https://elsewhere.example" + SELECT))
    assert reply.status_code == 401
    assert URL in reply.get_json()["error"]


def test_the_host_header_does_not_choose_the_audience(client, keys):
    forged = token(keys, aud="http://evil.example" + SELECT)
    reply = client.post(SELECT, json=body(), headers={"Authorization": f"Bearer {forged}", "Host": "evil.example"})
    assert reply.status_code == 401
    assert "http://evil.example" not in reply.get_json()["error"]


def _app(tmp_path, trust_file, bound=(), **extra):
    settings = app_settings(tmp_path, trusted_issuers=trust_file, **extra)
    return create_app(settings, list(bound)).test_client()


PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example.org"}
FORWARDED = {"Forwarded": 'for=10.0.0.1;proto=https;host="proxy.example.org"'}


def test_public_base_url_is_accepted_and_forwarded_headers_only_with_trust_proxy(tmp_path, trust_file, keys):
    public = _app(tmp_path, trust_file, public_base_url="https://cds.example.org/spine")
    assert post(public, token(keys, aud="https://cds.example.org/spine" + SELECT)).status_code == 200
    assert post(public, token(keys)).status_code == 401  # localhost is not where this one is called

    for headers in (PROXIED, FORWARDED):
        claims_for_proxy = token(keys, aud="https://proxy.example.org" + SELECT)
        untrusting = _app(tmp_path, trust_file, bound=[BASE]).post(
            SELECT, json=body(), headers={"Authorization": f"Bearer {claims_for_proxy}", **headers}
        )
        assert untrusting.status_code == 401
        trusting = _app(tmp_path, trust_file, bound=[BASE], trust_proxy=True)
        accepted = trusting.post(
            SELECT, json=body(), headers={"Authorization": f"Bearer {claims_for_proxy}", **headers}
        )
        assert accepted.status_code == 200


@pytest.mark.parametrize("headers", [PROXIED, FORWARDED], ids=["x-forwarded", "forwarded"])
def test_with_a_public_base_url_it_alone_is_the_audience_even_trusting_the_proxy(tmp_path, trust_file, keys, headers):
    """Issue 18, item 3: a proxy passing the client's Host on as X-Forwarded-Host let a token
    minted for another host in. With CDS_PUBLIC_BASE_URL set, neither forwarded headers nor the
    bound (internal) address count."""
    app = _app(tmp_path, trust_file, bound=[BASE], public_base_url="https://cds.example.org", trust_proxy=True)
    minted_elsewhere = token(keys, aud="https://proxy.example.org" + SELECT)
    reply = app.post(SELECT, json=body(), headers={"Authorization": f"Bearer {minted_elsewhere}", **headers})
    assert reply.status_code == 401
    assert post(app, token(keys, aud=URL)).status_code == 401  # the bound address is internal
    assert post(app, token(keys, aud="https://cds.example.org" + SELECT)).status_code == 200


def test_the_401_for_a_wrong_audience_names_only_the_public_url(tmp_path, trust_file, keys):
    """Issue 18, item 4: the bound internal address and port stay out of the answer."""
    internal = "http://10.1.2.3:8765"
    app = _app(tmp_path, trust_file, bound=[internal], public_base_url="https://cds.example.org", trust_proxy=True)
    reply = app.post(
        SELECT, json=body(), headers={"Authorization": f"Bearer {token(keys, aud='https://x.example' + SELECT)}"}
    )
    error = reply.get_json()["error"]
    assert reply.status_code == 401
    assert "aud" in error and "https://cds.example.org" + SELECT in error
    assert "10.1.2.3" not in error and "8765" not in error


def test_the_401_names_no_internal_address_without_a_public_base_url(tmp_path, trust_file, keys):
    app = _app(tmp_path, trust_file, bound=["http://10.1.2.3:8765"])
    reply = post(app, token(keys, aud="https://x.example" + SELECT))
    assert reply.status_code == 401
    assert "aud" in reply.get_json()["error"] and "10.1.2.3" not in reply.get_json()["error"]


def test_no_known_base_url_refuses_to_start(tmp_path, trust_file, monkeypatch, capsys):
    from cds_service.cli.main import main

    settings = app_settings(
        tmp_path,
        trusted_issuers=trust_file,
    )
    with pytest.raises(RuntimeError, match="CDS_PUBLIC_BASE_URL"):
        create_app(settings)
    monkeypatch.setenv("CDS_TRUSTED_ISSUERS", str(trust_file))
    monkeypatch.delenv("CDS_PUBLIC_BASE_URL", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "CDS_PUBLIC_BASE_URL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def live(tmp_path_factory, keys):
    """`cds-service serve` on 127.0.0.1 with authentication on, trusting our keys."""
    from conftest import running_service

    directory = tmp_path_factory.mktemp("live-auth")
    trust = directory / "trusted-issuers.json"
    trust.write_text(json.dumps({"https://ehr.example.org": {"jwks": {"keys": keys["jwks"]}}}))
    with running_service(
        {"CDS_TRUSTED_ISSUERS": str(trust), "CDS_FEEDBACK_DB": str(directory / "f.sqlite3")}, workers=1, threads=4
    ) as server:
        yield server


def live_post(live, bearer: str, headers=None):
    import requests

    return requests.post(
        live["base"] + SELECT, json=body(), timeout=10, headers={"Authorization": f"Bearer {bearer}", **(headers or {})}
    )


def test_served_on_loopback_its_bound_address_is_the_audience(live, keys):
    for host in ("127.0.0.1", "localhost"):
        assert live_post(live, token(keys, aud=f"http://{host}:{live['port']}{SELECT}")).status_code == 200


def test_served_the_host_header_and_x_forwarded_proto_choose_nothing(live, keys):
    # gunicorn turns X-Forwarded-Proto from loopback into an https request URL: it must not count.
    https = live_post(
        live, token(keys, aud=f"https://127.0.0.1:{live['port']}{SELECT}"), {"X-Forwarded-Proto": "https"}
    )
    assert https.status_code == 401
    other_host = live_post(live, token(keys, aud=f"http://evil.example{SELECT}"), {"Host": "evil.example"})
    assert other_host.status_code == 401
    assert f"http://127.0.0.1:{live['port']}{SELECT}" in other_host.json()["error"]


# ------------------------------------------------------------------ token fields never break an answer

HOSTILE_VALUES = ["kid\r\nSet-Cookie: stolen=1", "nul\x00kid", "\u65e5\u672c\u8a9e-\u00e9", 'q"uote\\', "x" * 5000]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("field", ["kid", "iss", "alg"])
def test_hostile_token_fields_answer_401_and_stay_out_of_headers(live, keys, field, value):
    if field == "kid":
        bearer = token(keys, kid=value)
    elif field == "iss":
        bearer = token(keys, iss=value)
    else:
        bearer = forged({"alg": value, "kid": "ehr-es384"})
    reply = live_post(live, bearer)
    assert reply.status_code == 401, reply.text
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="cds-services", error="invalid_token"'
    assert len(reply.json()["error"]) < 300


def forged(header: dict, payload: dict | None = None) -> str:
    """A JWT PyJWT would not sign (its header checks refuse these), with a signature that does not matter."""
    import base64

    def part(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload or claims())}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "header",
    [
        {"kid": ["a", "list"]},
        {"kid": {"an": "object"}},
        {"kid": 7},
        {"kid": "ehr-es384", "jku": ["x"]},
        {"kid": "ehr-es384", "jku": {"u": 1}},
    ],
)
def test_token_header_fields_of_the_wrong_type_answer_401(client, header):
    reply = post(client, forged({"alg": "ES384", **header}))
    assert reply.status_code == 401


def test_exp_beyond_any_clock_answers_401(client, keys):
    reply = post(
        client, jwt.encode({**claims(), "exp": 1e400}, keys["es"], algorithm="ES384", headers={"kid": "ehr-es384"})
    )
    assert reply.status_code == 401


# ------------------------------------------------------------------ token lifetime


def test_token_lifetime_is_capped(client, keys):
    now = int(time.time())
    assert post(client, token(keys, iat=now, exp=now + 300)).status_code == 200  # the sandbox's 5 minutes
    long_lived = post(client, token(keys, iat=now, exp=now + 3600))
    assert long_lived.status_code == 401
    assert "CDS_JWT_MAX_LIFETIME_SECONDS" in long_lived.get_json()["error"]


# ------------------------------------------------------------------ a slow or failing key server


class KeyServer:
    """A JWKS URL on loopback: `mode` is "slow" (answers after 2 s), "fail" (500), "empty" (no keys),
    "redirect" (302 to `target`), or "ok" (our keys)."""

    def __init__(self, jwks: dict):
        import threading
        from http.server import BaseHTTPRequestHandler

        from stub_servers import QuietHTTPServer

        owner = self
        self.mode, self.hits, self.target = "ok", 0, None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.hits += 1
                if owner.mode == "slow":
                    time.sleep(2)
                if owner.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", owner.target)
                    self.end_headers()
                    return
                payload = json.dumps({"keys": [] if owner.mode == "empty" else jwks["keys"]}).encode()
                self.send_response(500 if owner.mode == "fail" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def key_server(keys):
    server = KeyServer({"keys": keys["jwks"]})
    yield server
    server.server.shutdown()


def authenticator_for(tmp_path, url):
    from cds_service.web.auth import Authenticator

    path = tmp_path / "t.json"
    path.write_text(json.dumps({"https://ehr.example.org": {"jwks_url": url}}))
    seen = set()
    return Authenticator(load_trusted_issuers(path), 5, lambda i, j, e: (i, j) not in seen and not seen.add((i, j)))


@pytest.mark.parametrize("mode", ["fail", "slow", "empty"])
def test_unusable_key_server_is_not_asked_again_for_every_request(tmp_path, keys, key_server, monkeypatch, mode):
    from cds_service.web import auth as auth_module
    from cds_service.web.auth import AuthError

    monkeypatch.setattr(auth_module, "JWKS_FETCH_SECONDS", 0.5)
    # a back-off longer than the test on any machine: "not asked again" must not hang on how fast 20 tokens are made
    monkeypatch.setattr(auth_module, "JWKS_BACKOFF_SECONDS", (300, 300))
    key_server.mode = mode
    authenticator = authenticator_for(tmp_path, key_server.url)
    for _ in range(20):  # e.g. an attacker's tokens, each naming a kid nobody has
        with pytest.raises(AuthError):
            authenticator.verify("Bearer " + token(keys, kid=str(uuid.uuid4())), [URL])
    assert key_server.hits == 1


def test_key_server_is_asked_again_after_its_back_off(tmp_path, keys, key_server, monkeypatch):
    from cds_service.web import auth as auth_module
    from cds_service.web.auth import AuthError

    monkeypatch.setattr(auth_module, "JWKS_BACKOFF_SECONDS", (0.2, 1))
    key_server.mode = "fail"
    authenticator = authenticator_for(tmp_path, key_server.url)
    with pytest.raises(AuthError, match="could not be read"):
        authenticator.verify("Bearer " + token(keys), [URL])
    key_server.mode = "ok"
    time.sleep(0.3)
    authenticator.verify("Bearer " + token(keys), [URL])
    assert key_server.hits == 2


def test_key_server_redirect_is_not_followed(tmp_path, keys, key_server):
    from cds_service.web.auth import AuthError

    elsewhere = KeyServer({"keys": keys["jwks"]})
    try:
        key_server.mode, key_server.target = "redirect", elsewhere.url
        with pytest.raises(AuthError, match="could not be read"):
            authenticator_for(tmp_path, key_server.url).verify("Bearer " + token(keys), [URL])
        assert elsewhere.hits == 0
    finally:
        elsewhere.server.shutdown()


@pytest.mark.parametrize("url", ["cds.example.org", "https://cds.example.org/?x=1", "https://u:p@cds.example.org"])
def test_a_public_base_url_that_is_not_a_base_url_stops_the_service(monkeypatch, url):
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", url)
    with pytest.raises(SystemExit, match="CDS_PUBLIC_BASE_URL") as stopped:
        Settings.from_env()
    assert "u:p" not in str(stopped.value)
