"""The evidence page a card links to: the findings, codes and full checklist behind one card.

It holds patient data, so it is protected like this:
- Nothing is stored. The page's content travels inside its link, compressed and sealed with
  AES-128-GCM (authenticated encryption, `cryptography`; the time it was sealed is inside the
  sealed part): nobody can read or alter it without the key, and a link older than
  CDS_EVIDENCE_LINK_HOURS (default 8, a clinic shift) is refused. (AES-GCM rather than Fernet: a
  third of the cost, on every card.)
- The key is derived from the patient-hash key (CDS_PATIENT_HASH_KEY, else the random key kept
  in the database), so every instance sharing that key opens every link; rotating it retires
  every link at once.
- The link is a capability: whoever holds it can open the page until it expires, as with any
  link the EHR shows. The page asks for no further credential (a clinician's browser has none for
  this service), is never cached (Cache-Control: no-store), sends no Referer, cannot be framed,
  loads nothing (Content-Security-Policy: default-src 'none'), and is marked noindex; its path is
  never logged (the answer's log line says "/evidence/[link]").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Blueprint, Response

EVIDENCE_PATH = "/evidence/"
HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


# v2: a flag byte says whether the page is compressed (v1, every page compressed, still opens).
VERSION = b"\x02"
OPENS = (b"\x01", VERSION)
# zlib costs about as much as the rest of the card: a typical page (~2 KB) is sealed as it is (a
# ~3 KB link), a long one compressed, so that no link outgrows a proxy's 16 KB request line.
COMPRESS_ABOVE = 3072
CLOCK_SKEW_SECONDS = 300  # a link sealed "in the future" by another instance's clock


class EvidenceLinks:
    """Seals an evidence page into a link, and opens a link back into the page.

    token = base64url(version, nonce, AES-128-GCM(sealed-at seconds, flag, JSON page or zlib of it))."""

    def __init__(self, secret: bytes, ttl_seconds: int):
        key = hmac.new(secret, b"spine-imaging-cds evidence link v1", hashlib.sha256).digest()[:16]
        self._aead_key = key
        self._aead = AESGCM(key)
        self.ttl_seconds = ttl_seconds

    def url(self, base: str, page: dict[str, Any], now: float | None = None) -> str:
        try:
            encoded = orjson.dumps(page)
        except TypeError:  # a lone surrogate from the record: shown as U+FFFD, never a 500
            encoded = orjson.dumps(_scrubbed(page))
        body = b"z" + zlib.compress(encoded, 1) if len(encoded) > COMPRESS_ABOVE else b"j" + encoded
        nonce = os.urandom(12)
        sealed_at = struct.pack(">Q", int(time.time() if now is None else now))
        sealed = self._aead.encrypt(nonce, sealed_at + body, VERSION)
        token = base64.urlsafe_b64encode(VERSION + nonce + sealed).rstrip(b"=").decode()
        return f"{base.rstrip('/')}{EVIDENCE_PATH}{token}"

    def open(self, token: str, now: float | None = None) -> dict[str, Any] | None:
        """The page, or None when the link is not one of ours, was altered, or has expired."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version = raw[:1]
            if version not in OPENS or len(raw) < 1 + 12 + 16 + 8:
                return None
            plain = self._aead.decrypt(raw[1:13], raw[13:], version)
            (sealed_at,) = struct.unpack(">Q", plain[:8])
            age = (time.time() if now is None else now) - sealed_at
            if age > self.ttl_seconds or age < -CLOCK_SKEW_SECONDS:
                return None
            body = plain[8:] if version == VERSION else b"z" + plain[8:]
            page = orjson.loads(zlib.decompress(body[1:]) if body[:1] == b"z" else body[1:])
        except (InvalidTag, ValueError, zlib.error, struct.error):
            return None
        return page if isinstance(page, dict) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrubbed(value: Any) -> Any:
    """A JSON tree whose strings are valid UTF-8: lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_scrubbed(key): _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value


def _list(items: list[Any], render=lambda item: html.escape(str(item))) -> str:
    if not items:
        return "<p class='none'>none</p>"
    return "<ul>" + "".join(f"<li>{render(item)}</li>" for item in items) + "</ul>"


def _finding(item: dict[str, str]) -> str:
    e = {key: html.escape(str(value)) for key, value in item.items()}
    why = f" <em>Not counted: {e['why']}.</em>" if "why" in e else ""
    return (
        f"<b>{e.get('label', '')}</b>: {e.get('what', '')} ({e.get('date', '')}, {e.get('status', '')}) "
        f"<span class='code'>{e.get('code', '')} &middot; {e.get('reference', '')} &middot; from {e.get('from', '')}"
        f"</span>{why}"
    )


def render_page(page: dict[str, Any], guideline: Callable[[str], dict[str, Any]] | None = None) -> str:
    """The page as HTML: every value escaped (record text is data, never markup). The page names
    concordant guidelines by id (a shorter link); `guideline` (mappings.guideline) gives each its
    title and URL."""
    esc = html.escape
    source = page.get("source") or {}
    source_link = (
        f"<a href='{esc(source['url'])}' rel='noreferrer'>{esc(source.get('label', ''))}</a>"
        if str(source.get("url", "")).startswith("https://")
        else esc(source.get("label", ""))
    )
    named = [
        (guideline(item) if guideline else {"label": item}) if isinstance(item, str) else item
        for item in page.get("concordant", [])
    ]
    named = [{"label": g.get("title", g.get("label", g.get("id", ""))), "url": g.get("url", "")} for g in named]
    concordant = _list(
        named,
        lambda g: (
            f"<a href='{esc(g['url'])}' rel='noreferrer'>{esc(g['label'])}</a>"
            if str(g.get("url", "")).startswith("https://")
            else esc(g.get("label", ""))
        ),
    )
    sections = [
        ("Why", _list(page.get("why", []))),
        (
            "Now",
            f"<p>{esc(page.get('now', ''))}</p>"
            + (f"<p>Contrast: {esc(page['contrast'])}</p>" if page.get("contrast") else ""),
        ),
        ("What would change this verdict", _list(page.get("confirm", []))),
        ("Red flags and risk factors counted", _list(page.get("found", []), _finding)),
        ("In the record, not counted for this order", _list(page.get("not_counted", []), _finding)),
        ("This region's red flags not in the record (ask or examine)", _list(page.get("not_in_record", []))),
        (f"Episode: {esc(page.get('episode', ''))}", _list(page.get("episode_findings", []), _finding)),
        (f"Conservative therapy: {esc(page.get('therapy', ''))}", _list(page.get("therapy_items", []))),
        ("Prior spine imaging, last 12 months", _list(page.get("prior_imaging", []))),
        ("Data that could not be read", _list(page.get("missing", []))),
        ("Not documented, needed to rate this order", _list(page.get("not_documented", []))),
        ("Not used, and why", _list(page.get("skipped", []))),
        ("Concordant guidance", concordant),
    ]
    acr = f"; ACR: {esc(page['acr_rating'])}" if page.get("acr_rating") else ""
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='robots' content='noindex, nofollow'><title>Evidence: spine MRI order</title>",
            "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:60rem;color:#222}"
            "h1{font-size:20px}h2{font-size:15px;margin:18px 0 4px}.code{color:#666;font-size:12px}"
            ".none{color:#888}.sub{color:#555}</style></head><body>",
            f"<h1>{esc(page.get('summary', ''))}</h1>",
            f"<p class='sub'>{esc(page.get('order', ''))}. Evaluated {esc(page.get('as_of', ''))}: "
            f"{esc(page.get('verdict', ''))}; PAMA rating {esc(page.get('rating', ''))}{acr}.</p>",
            f"<p class='sub'>Source: {source_link}</p>",
            *(f"<h2>{title}</h2>{body}" for title, body in sections),
            "<p class='sub'>spine-imaging CDS. This page is not stored; its link expires.</p></body></html>",
        ]
    )


def blueprint(links: EvidenceLinks, guideline: Callable[[str], dict[str, Any]] | None = None) -> Blueprint:
    """GET /evidence/<token>: the page, 410 when its link has expired or is not valid."""
    pages = Blueprint("evidence", __name__)

    @pages.get(f"{EVIDENCE_PATH}<path:token>")
    def evidence(token: str) -> Response:
        page = links.open(token)
        if page is None:
            body = (
                "<!doctype html><meta charset='utf-8'><title>Link expired</title><p>This evidence link has "
                "expired or is not valid. Open the card again from the order to get a new one.</p>"
            )
            return Response(body, status=410, mimetype="text/html", headers=HEADERS)
        return Response(render_page(page, guideline), mimetype="text/html", headers=HEADERS)

    return pages
