"""Inputs that were accepted without a word and should not be (issue 18, item 2)."""

from __future__ import annotations

import pytest

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
