"""Inputs that were accepted without a word and should not be (issue 18, item 2)."""

from __future__ import annotations

import pytest
from apps import app_settings

from cds_service.cli import fixtures
from cds_service.hooks.request import HookRequestError, check_request

SELECT = "spine-mri-order-select"


def test_a_selection_naming_no_draft_order_is_400_and_says_which():
    body = fixtures.hook_request("lbp-cauda-equina")
    body["context"]["selections"] = ["ServiceRequest/lbp-cauda-equina-mri", "ServiceRequest/not-drafted"]
    with pytest.raises(HookRequestError) as refused:
        check_request(SELECT, body)
    assert refused.value.status == 400
    assert "ServiceRequest/not-drafted" in refused.value.message
    assert "draftOrders" in refused.value.message


def test_a_selection_naming_no_draft_order_is_400_over_http(client):
    body = fixtures.hook_request("lbp-cauda-equina")
    body["context"]["selections"] = ["ServiceRequest/typo-mri"]
    reply = client.post(f"/cds-services/{SELECT}", json=body)
    assert reply.status_code == 400
    assert "ServiceRequest/typo-mri" in reply.get_json()["error"]


def test_selections_of_drafted_orders_pass(captured_sandbox):
    check_request(SELECT, fixtures.hook_request("lbp-cauda-equina"))
    for name in ("order_select", "order_select_empty_order"):
        check_request(SELECT, captured_sandbox[name])


@pytest.mark.parametrize(
    "aud",
    ["127.0.0.1:8765/cds-services/spine-mri-order-select", "/cds-services/spine-mri-order-select", "", "http://", "x"],
)
def test_token_refuses_an_aud_that_is_not_an_absolute_url(tmp_path, capsys, aud):
    from cds_service.cli.main import main

    assert main(["keygen", "--issuer", "https://ehr.example.org", "--out", str(tmp_path), "--kid", "k"]) == 0
    capsys.readouterr()
    code = main(["token", "--issuer", "https://ehr.example.org", "--key", str(tmp_path / "k.pem"), "--aud", aud])
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and "--aud" in error and "absolute" in error


def test_discovery_answers_with_a_trailing_slash_too(client):
    plain = client.get("/cds-services")
    slashed = client.get("/cds-services/")
    assert slashed.status_code == 200
    assert slashed.get_json() == plain.get_json()


def test_discovery_with_a_trailing_slash_stays_open_with_authentication_on(tmp_path):
    import json

    from cds_service.web.app import create_app

    trust = tmp_path / "trusted-issuers.json"
    trust.write_text(json.dumps({"https://ehr.example.org": {"jwks": {"keys": []}}}))
    settings = app_settings(
        tmp_path,
        max_body_bytes=10**6,
        trusted_issuers=trust,
    )
    client = create_app(settings, ["http://127.0.0.1:8765"]).test_client()
    assert client.get("/cds-services/").status_code == 200
    assert client.post("/cds-services/spine-mri-order-select", json={}).status_code == 401
