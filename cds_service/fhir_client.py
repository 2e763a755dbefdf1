"""FHIR access, second source: read from the EHR's FHIR server what the prefetch did not hold.

Only servers on the allowlist are called. Queries are the discovery prefetch templates, run
concurrently on a bounded pool over one pooled `requests` session, following `next` links
(same server only) up to a page cap, retrying idempotent GETs on 429/502/503/504 with
backoff, and stopping at a total time budget: whatever is not back by then stays unread and
the rules say so. The access token is sent to the FHIR server and never logged.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .data_sources import EXPECTED_TYPES, ClinicalData, read_prefetch_value

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
RETRY_BACKOFF_SECONDS = (0.05, 0.15, 0.4)
FHIR_JSON = "application/fhir+json, application/json;q=0.9"


def normalise_base(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class FhirSettings:
    allowed_servers: frozenset[str]
    budget_seconds: float = 2.0
    max_pages: int = 20
    concurrency: int = 8

    def allows(self, base: str | None) -> bool:
        return bool(base) and normalise_base(base) in self.allowed_servers


class _Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class FetchFailed(Exception):
    pass


class FhirFetcher:
    """One per server process: the pool and the session are shared by every hook call."""

    def __init__(self, settings: FhirSettings):
        self.settings = settings
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=max(settings.concurrency, 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="fhir")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one query
    def _get(self, url: str, headers: dict, budget: _Budget) -> requests.Response:
        for attempt in range(len(RETRY_BACKOFF_SECONDS) + 1):
            left = budget.left()
            if left <= 0.01:
                raise FetchFailed("the time budget ran out")
            try:
                reply = self.session.get(url, headers=headers, timeout=(min(left, 1.0), left))
            except requests.Timeout:
                raise FetchFailed("the FHIR server did not answer within the time budget") from None
            except requests.RequestException as error:
                raise FetchFailed(f"the FHIR server could not be reached ({type(error).__name__})") from None
            if reply.status_code not in RETRY_STATUSES or attempt == len(RETRY_BACKOFF_SECONDS):
                return reply
            pause = RETRY_BACKOFF_SECONDS[attempt]
            retry_after = reply.headers.get("Retry-After", "")
            if retry_after.isdigit():
                pause = max(pause, float(retry_after))
            if pause >= budget.left():
                return reply
            time.sleep(pause)
        raise FetchFailed("unreachable")  # pragma: no cover

    @staticmethod
    def _json(reply: requests.Response) -> dict:
        try:
            body = reply.json()
        except ValueError:
            raise FetchFailed(f"the FHIR server answered HTTP {reply.status_code} with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise FetchFailed("the FHIR server answered JSON that is not a FHIR resource")
        return body

    def _fetch_key(self, base: str, key: str, query: str, headers: dict, budget: _Budget) -> dict:
        """The prefetch value for one key: a resource, or a Bundle of every page."""
        url = f"{base}/{query}"
        pages, entries, first = 0, [], None
        while url:
            reply = self._get(url, headers, budget)
            if reply.status_code in (401, 403):
                raise FetchFailed(f"the FHIR server refused access (HTTP {reply.status_code})")
            body = self._json(reply)
            if reply.status_code >= 400 or body.get("resourceType") == "OperationOutcome":
                if key == "patient" and reply.status_code == 404:
                    raise FetchFailed("the patient was not found on the FHIR server")
                text = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in body.get("issue", [])
                                 if isinstance(i, dict)) or f"HTTP {reply.status_code}"
                raise FetchFailed(f"the FHIR server answered an error ({text})")
            if body.get("resourceType") != "Bundle":
                return body
            first = first or body
            entries.extend(body.get("entry") or [])
            pages += 1
            url = next((link.get("url") for link in body.get("link") or []
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if url and not normalise_base(url).startswith(base):
                raise FetchFailed("a next link points away from the FHIR server; not followed")
            if url and pages >= self.settings.max_pages:
                raise FetchFailed(f"more than {self.settings.max_pages} pages of results (CDS_FHIR_MAX_PAGES)")
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    # ------------------------------------------------------------------ one hook
    def fill(self, data: ClinicalData, body: dict, templates: dict[str, str], wanted: list[str]) -> dict:
        """Fetch `wanted` keys into `data`; returns per-key timings in ms (for the log and the benchmark)."""
        base = normalise_base(body.get("fhirServer") or "")
        auth = body.get("fhirAuthorization") if isinstance(body.get("fhirAuthorization"), dict) else {}
        headers = {"Accept": FHIR_JSON, "Prefer": "handling=strict"}
        if auth.get("access_token"):
            headers["Authorization"] = f"Bearer {auth['access_token']}"
        context = body.get("context") or {}
        budget = _Budget(self.settings.budget_seconds)
        timings: dict[str, float] = {}

        def task(key: str):
            started = time.perf_counter()
            try:
                query = _render(templates[key], context)
                return key, self._fetch_key(base, key, query, headers, budget), None
            except FetchFailed as error:
                return key, None, str(error)
            finally:
                timings[key] = (time.perf_counter() - started) * 1000

        futures = {self.pool.submit(task, key): key for key in wanted}
        done, pending = wait(futures, timeout=max(budget.left(), 0))
        for future in pending:
            future.cancel()
            data.unread[futures[future]] = "the FHIR server did not answer within the time budget"
        for future in done:
            key, value, problem = future.result()
            if problem:
                data.unread[key] = problem
                continue
            data.unread.pop(key, None)
            read_prefetch_value(key, value, data)
        return timings


def _render(template: str, context: dict) -> str:
    """A prefetch template with its {{context.x}} tokens filled (URL-encoded)."""
    out = template
    for name, value in context.items():
        token = "{{context.%s}}" % name
        if token in out:
            if not isinstance(value, str):
                raise FetchFailed(f"context.{name} is not a string")
            out = out.replace(token, quote(value, safe=""))
    if "{{" in out:
        raise FetchFailed("the query template has a token the context does not fill")
    return out


def fetchable(data: ClinicalData) -> list[str]:
    """Prefetch keys worth asking the server for: absent, failed at the EHR, or paged."""
    return [key for key in EXPECTED_TYPES if key in data.unread]


def describe_host(url: str | None) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else str(url)


def log_fetch(hook_instance: str, base: str, timings: dict, data: ClinicalData) -> None:
    log.info(json.dumps({"event": "fhir-fetch", "hookInstance": hook_instance, "fhirServer": describe_host(base),
                         "timings_ms": {k: round(v, 1) for k, v in timings.items()},
                         "unread": sorted(data.unread)}))
