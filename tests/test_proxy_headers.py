"""What the shipped nginx template forwards, and which host names it answers (issue 18, item 3).

With CDS_TRUST_PROXY=1 the service takes the proxy's forwarded origin as a token audience. The
template passed the client's own Host on as X-Forwarded-Host, so a token minted for another host
got in by naming that host. Now the proxy answers only its configured name (CDS_PUBLIC_HOST) and
forwards that name, never one a client chose. The service runs here for real behind nginx
(deploy/nginx/cds.conf.template), authentication on, trusting the proxy, without
CDS_PUBLIC_BASE_URL (with it, it alone is the audience: tests/test_auth.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from bench_modules import load_bench

from cds_service.cli import fixtures
from cds_service.cli.processes import free_port

slow = load_bench("slow_clients")
SELECT = slow.SELECT


@pytest.fixture(scope="module")
def proxy():
    if slow.find_nginx() is None:
        pytest.fail("nginx is not installed (scripts/system-packages.sh installs it)")
    directory = Path(tempfile.mkdtemp(prefix="cds-proxy-headers-"))
    pem, kid, trust = slow.client_identity(directory)
    service_port, proxy_port = free_port(), free_port()
    service = slow.start_service(service_port, None, trust, directory, extra_env={"CDS_TRUST_PROXY": "1"})
    nginx = slow.LocalNginx(proxy_port, f"127.0.0.1:{service_port}")
    try:
        nginx.start()
        yield {"base": nginx.base, "host": f"127.0.0.1:{proxy_port}", "pem": pem, "kid": kid}
    finally:
        nginx.stop()
        service.terminate()
        service.wait(timeout=15)
        shutil.rmtree(directory, ignore_errors=True)


def hook(proxy, aud: str, headers: dict | None = None) -> requests.Response:
    token = slow.sign_token(slow.ISSUER, proxy["pem"], aud, proxy["kid"])
    return requests.post(
        proxy["base"] + SELECT,
        json=fixtures.hook_request("lbp-osteoporosis"),
        timeout=30,
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )


def test_a_token_for_the_configured_name_gets_in(proxy):
    assert hook(proxy, f"http://{proxy['host']}{SELECT}").status_code == 200


def test_another_host_name_is_not_answered(proxy):
    """The attack: Host names the host the token was minted for."""
    reply = hook(proxy, f"http://evil.example{SELECT}", {"Host": "evil.example"})
    assert reply.status_code == 421
    assert "error" in reply.json()


def test_forwarded_headers_a_client_sends_are_replaced_by_the_configured_name(proxy):
    claimed = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
        "Forwarded": 'for=10.0.0.1;proto=http;host="evil.example"',
    }
    reply = hook(proxy, f"http://evil.example{SELECT}", claimed)
    assert reply.status_code == 401
    assert "evil.example" not in reply.json()["error"]
    assert hook(proxy, f"http://{proxy['host']}{SELECT}", claimed).status_code == 200


def test_the_configured_name_with_another_port_is_not_answered(proxy):
    host = proxy["host"].rpartition(":")[0]
    reply = hook(proxy, f"http://{host}:1{SELECT}", {"Host": f"{host}:1"})
    assert reply.status_code == 421
