"""The evidence page behind each card's link: sealed, expiring, unreadable without the key, never logged."""

from __future__ import annotations

import base64
import logging

from cds_service.cli import fixtures
from cds_service.web.evidence import EVIDENCE_PATH, HEADERS, EvidenceLinks, render_page

SELECT = "/cds-services/spine-mri-order-select"
PAGE = {"summary": "Back pain with weight loss", "why": ["Unexplained weight loss (R63.4)"], "found": []}


def card_link(client, patient: str = "lbp-weight-loss") -> str:
    card = client.post(SELECT, json=fixtures.hook_request(patient, "order-select")).get_json()["cards"][0]
    url = card["links"][0]["url"]
    assert card["links"][0]["type"] == "absolute"
    return url[url.index(EVIDENCE_PATH) :]


def test_the_card_link_opens_this_patients_page_with_no_store_headers(client):
    reply = client.get(card_link(client))
    assert reply.status_code == 200
    page = reply.get_data(as_text=True)
    assert "weight loss" in page.lower()
    for header, value in HEADERS.items():
        assert reply.headers[header] == value
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


def test_a_link_carries_no_readable_patient_data():
    links = EvidenceLinks(b"k" * 32, ttl_seconds=3600)
    token = links.url("https://cds.example", PAGE).rsplit("/", 1)[1]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"weight" not in raw and b"R63" not in raw
    assert links.open(token) == PAGE
    # two seals of one page differ (a fresh nonce each): a link says nothing by its likeness to another
    assert links.url("https://cds.example", PAGE) != links.url("https://cds.example", PAGE)


def test_an_altered_link_is_refused_with_410(client):
    link = card_link(client)
    token = link[len(EVIDENCE_PATH) :]
    middle = len(token) // 2
    altered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    for bad in (altered, token[:-4], "not-a-link", token + "AAAA"):
        reply = client.get(EVIDENCE_PATH + bad)
        assert reply.status_code == 410, bad
        assert "expired or is not valid" in reply.get_data(as_text=True)
        assert reply.headers["Cache-Control"] == "no-store"


def test_a_link_expires_after_its_hours_and_is_refused_from_the_future():
    links = EvidenceLinks(b"k" * 32, ttl_seconds=8 * 3600)
    sealed_at = 1_800_000_000
    token = links.url("https://cds.example", PAGE, now=sealed_at).rsplit("/", 1)[1]
    assert links.open(token, now=sealed_at + 8 * 3600 - 1) == PAGE
    assert links.open(token, now=sealed_at + 8 * 3600 + 1) is None
    # sealed by a clock far ahead of ours: not trusted (a few minutes of skew are)
    assert links.open(token, now=sealed_at - 60) == PAGE
    assert links.open(token, now=sealed_at - 3600) is None


def test_a_link_sealed_with_another_key_does_not_open():
    ours, theirs = EvidenceLinks(b"a" * 32, 3600), EvidenceLinks(b"b" * 32, 3600)
    token = theirs.url("https://cds.example", PAGE).rsplit("/", 1)[1]
    assert ours.open(token) is None


def test_the_link_token_never_reaches_the_log(client, caplog):
    link = card_link(client)
    token = link[len(EVIDENCE_PATH) :]
    with caplog.at_level(logging.INFO, logger="cds_service.http"):
        assert client.get(link).status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/evidence/[link]" in logged
    assert token not in logged and token[:24] not in logged


def test_record_text_on_the_page_is_data_never_markup():
    hostile = "<script>alert(1)</script>"
    page = render_page(
        {
            "summary": hostile,
            "why": [hostile],
            "found": [{"label": hostile, "what": hostile, "date": "2026-01-01", "status": "active"}],
            "source": {"label": "ACR", "url": "javascript:alert(1)"},
        }
    )
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "href='javascript" not in page  # only https sources become links


def test_a_lone_surrogate_from_the_record_is_sealed_as_a_replacement_character():
    links = EvidenceLinks(b"k" * 32, ttl_seconds=3600)
    token = links.url("https://cds.example", {"why": ["fever \ud800 39"]}).rsplit("/", 1)[1]
    assert links.open(token) == {"why": ["fever \ufffd 39"]}


def test_a_long_page_is_compressed_a_short_one_is_not_and_both_open():
    from cds_service.web.evidence import COMPRESS_ABOVE

    links = EvidenceLinks(b"k" * 32, ttl_seconds=3600)
    short, long_ = {"why": ["fever"]}, {"why": ["fever " * 2000]}
    short_token = links.url("https://cds.example", short).rsplit("/", 1)[1]
    long_token = links.url("https://cds.example", long_).rsplit("/", 1)[1]
    assert links.open(short_token) == short and links.open(long_token) == long_
    assert len(long_token) < COMPRESS_ABOVE  # 12 KB of page, compressed into a short link


def test_a_link_sealed_before_the_flag_byte_still_opens_within_its_hours():
    """Version 1 links (every page compressed) stay valid through an upgrade."""
    import os
    import struct
    import time
    import zlib

    import orjson
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    links = EvidenceLinks(b"k" * 32, ttl_seconds=3600)
    nonce = os.urandom(12)
    plain = struct.pack(">Q", int(time.time())) + zlib.compress(orjson.dumps(PAGE), 1)
    sealed = AESGCM(links._aead_key).encrypt(nonce, plain, b"\x01")
    token = base64.urlsafe_b64encode(b"\x01" + nonce + sealed).rstrip(b"=").decode()
    assert links.open(token) == PAGE


def test_concordant_guidance_is_named_by_id_and_shown_with_title_and_link(client):
    page = client.get(card_link(client)).get_data(as_text=True)
    assert "<h2>Concordant guidance</h2>" in page
    assert "href='https://doi.org/10.7326/0003-4819-147-7-200710020-00006'" in page  # ACP/APS 2007
