"""FHIR access, second source: read from the EHR's FHIR server what the prefetch did not hold.

Only servers on the allowlist are called, and the same check (`outbound.within`) decides it for
the `fhirServer`, for every redirect and for every `next` link: redirects and next links must
stay under the hook's `fhirServer` base, the only server its access token is meant for.
Queries are the discovery prefetch templates, run concurrently on a bounded pool per allowed
server (so one slow server cannot take the workers another needs) over one pooled session,
retrying idempotent GETs on 429/502/503/504 with backoff. One budget holds for all the reads of
a hook together, every query, page, redirect and retry: its time (CDS_FHIR_BUDGET_SECONDS, on the
socket) and its decoded bytes (CDS_FHIR_BUDGET_BYTES); each answer is also refused beyond
CDS_FHIR_MAX_RESPONSE_BYTES. Whatever is not back within them stays unread and the rules say so.
The access token is never logged.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from urllib.parse import quote, urljoin

from ..clinical.record import EXPECTED_TYPES, ClinicalData
from .outbound import Outbound, OutboundError, describe_host, is_base_url, within
from .prefetch import log_other_patient, operation_outcome_text, read_prefetch_value

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 502, 503, 504}
RETRY_BACKOFF_SECONDS = (0.05, 0.15, 0.4)
MAX_REDIRECTS = 5
FHIR_JSON = "application/fhir+json, application/json;q=0.9"
# RFC 6750's b64token is stricter; any visible ASCII keeps opaque tokens working and the header intact.
ACCESS_TOKEN = re.compile(r"[\x21-\x7e]+")


def normalise_base(url: str) -> str:
    return url.strip().rstrip("/")


def checked_allowed_server(url: str) -> str:
    """An allowlist entry, normalised; ValueError saying why it cannot be one."""
    base = normalise_base(url)
    if not is_base_url(base):
        raise ValueError(f"{describe_host(base)} is not an http(s) base URL without credentials, query or fragment")
    return base


@dataclass(frozen=True)
class FhirSettings:
    allowed_servers: frozenset[str]
    budget_seconds: float = 2.0
    max_pages: int = 20
    concurrency: int = 8  # per allowed server
    max_response_bytes: int = 16 * 1024 * 1024
    budget_bytes: int = 16 * 1024 * 1024  # decoded bytes of all the reads of one hook together

    def server_for(self, fhir_server) -> str | None:
        """The allowlist entry `fhir_server` falls under (the longest), or None when it is not allowed."""
        if not is_base_url(fhir_server):
            return None
        matches = [allowed for allowed in self.allowed_servers if within(fhir_server, allowed)]
        return max(matches, key=len) if matches else None

    def allows(self, fhir_server) -> bool:
        return self.server_for(fhir_server) is not None


class _Budget:
    """What one hook may spend on FHIR reads, all its queries, pages and retries together: time
    (a deadline) and decoded bytes. Shared by the hook's concurrent queries."""

    def __init__(self, seconds: float, max_bytes: int):
        self.deadline = time.monotonic() + seconds
        self.max_bytes = max_bytes
        self._spent = 0
        self._lock = threading.Lock()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spend(self, size: int) -> None:
        """Count `size` decoded bytes; OutboundError once the hook's bytes are spent."""
        with self._lock:
            self._spent += size
            spent = self._spent
        if spent > self.max_bytes:
            raise OutboundError(
                f"sent more than this hook may read from FHIR servers ({self.max_bytes} bytes, "
                "all queries and pages together)",
                "over-budget",
            )


class FetchFailed(Exception):
    pass


class FhirAuthorizationError(ValueError):
    """The hook's fhirAuthorization cannot be sent; the message never holds the token."""


def authorization_header(body: dict) -> str | None:
    auth = body.get("fhirAuthorization")
    if not isinstance(auth, dict) or auth.get("access_token") in (None, ""):
        return None
    token = auth["access_token"]
    if not isinstance(token, str) or not ACCESS_TOKEN.fullmatch(token):
        raise FhirAuthorizationError(
            "fhirAuthorization.access_token must be a string of visible ASCII characters (an RFC 6750 bearer token)"
        )
    return f"Bearer {token}"


class FhirFetcher:
    """One per server process: the session and the per-server pools are shared by every hook call."""

    def __init__(self, settings: FhirSettings):
        self.settings = settings
        self.outbound = Outbound(
            pool_connections=max(8, len(settings.allowed_servers)), pool_maxsize=max(settings.concurrency, 4)
        )
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def _pool(self, allowed_server: str) -> ThreadPoolExecutor:
        with self._lock:
            if allowed_server not in self._pools:
                self._pools[allowed_server] = ThreadPoolExecutor(
                    max_workers=self.settings.concurrency, thread_name_prefix="fhir"
                )
            return self._pools[allowed_server]

    # ------------------------------------------------------------------ one query
    def _get_once(self, url: str, headers: dict, budget: _Budget):
        try:
            budget.spend(0)  # nothing more is asked once the hook's bytes are spent
            return self.outbound.get(
                url, headers, budget.deadline, self.settings.max_response_bytes, spend=budget.spend
            )
        except OutboundError as error:
            setting = {"too-large": " (CDS_FHIR_MAX_RESPONSE_BYTES)", "over-budget": " (CDS_FHIR_BUDGET_BYTES)"}
            raise FetchFailed(f"the FHIR server {error}{setting.get(error.kind, '')}") from None

    def _get(self, url: str, base: str, headers: dict, budget: _Budget):
        """The answer to a GET: retried on 429/502/503/504, redirected only within `base`."""
        redirects = attempt = 0
        while True:
            reply = self._get_once(url, headers, budget)
            if reply.status in (301, 302, 303, 307, 308) and reply.headers.get("Location"):
                url = urljoin(url, reply.headers["Location"])
                if not within(url, base):
                    raise FetchFailed(
                        f"the FHIR server redirected outside its base {describe_host(base)}; not followed"
                    )
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise FetchFailed(f"the FHIR server redirected more than {MAX_REDIRECTS} times; not followed")
                continue
            if reply.status not in RETRY_STATUSES or attempt == len(RETRY_BACKOFF_SECONDS):
                return reply
            pause = RETRY_BACKOFF_SECONDS[attempt]
            attempt += 1
            retry_after = reply.headers.get("Retry-After", "")
            if retry_after.isdigit():
                pause = max(pause, float(retry_after))
            if pause >= budget.left():
                return reply
            time.sleep(pause)

    @staticmethod
    def _json(status: int, content: bytes) -> dict:
        try:
            body = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise FetchFailed(f"the FHIR server answered HTTP {status} with a body that is not JSON") from None
        except RecursionError:
            raise FetchFailed("the FHIR server answered JSON nested too deeply") from None
        if not isinstance(body, dict):
            raise FetchFailed("the FHIR server answered JSON that is not a FHIR resource")
        return body

    def _fetch_key(self, base: str, key: str, query: str, headers: dict, budget: _Budget) -> dict:
        """The prefetch value for one key: a resource, or a Bundle of every page."""
        url = f"{base}/{query}"
        pages, entries = 0, []
        while url:
            reply = self._get(url, base, headers, budget)
            status = reply.status
            if status in (401, 403):
                raise FetchFailed(f"the FHIR server refused access (HTTP {status})")
            body = self._json(status, reply.body)
            if status >= 400 or body.get("resourceType") == "OperationOutcome":
                if key == "patient" and status == 404:
                    raise FetchFailed("the patient was not found on the FHIR server")
                text = operation_outcome_text(body) if body.get("resourceType") == "OperationOutcome" else ""
                raise FetchFailed(f"the FHIR server answered an error ({text or f'HTTP {status}'})")
            if body.get("resourceType") != "Bundle":
                return body
            page_entries, links = body.get("entry") or [], body.get("link") or []
            if not isinstance(page_entries, list) or not isinstance(links, list):
                raise FetchFailed("the FHIR server answered a malformed Bundle (entry or link is not an array)")
            entries.extend(page_entries)
            pages += 1
            url = next(
                (
                    link["url"]
                    for link in links
                    if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str)
                ),
                "",
            )
            if url and not within(url, base):
                raise FetchFailed("a next link points away from the FHIR server; not followed")
            if url and pages >= self.settings.max_pages:
                raise FetchFailed(f"more than {self.settings.max_pages} pages of results (CDS_FHIR_MAX_PAGES)")
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    # ------------------------------------------------------------------ one hook
    def fill(self, data: ClinicalData, body: dict, templates: dict[str, str], wanted: list[str]) -> dict:
        """Fetch `wanted` keys into `data` from the hook's (allowed) fhirServer; returns per-key timings
        in ms (for the log and the benchmark). FhirAuthorizationError when the access token cannot be sent."""
        base = normalise_base(body.get("fhirServer") or "")
        allowed_server = self.settings.server_for(base)
        if allowed_server is None:
            raise ValueError(f"{describe_host(base)} is not on the allowlist")
        headers = {"Accept": FHIR_JSON, "Accept-Encoding": "gzip", "Prefer": "handling=strict"}
        authorization = authorization_header(body)
        if authorization:
            headers["Authorization"] = authorization
        context = body.get("context") or {}
        patient_id = context.get("patientId") if isinstance(context.get("patientId"), str) else None
        left_out_before = data.other_patient
        budget = _Budget(self.settings.budget_seconds, self.settings.budget_bytes)
        timings: dict[str, float] = {}

        def task(key: str):
            # returns its own time: a task still running at the deadline must not write into
            # what the request thread reads
            started = time.perf_counter()
            try:
                query = _render(templates[key], context)
                value, problem = self._fetch_key(base, key, query, headers, budget), None
            except FetchFailed as error:
                value, problem = None, str(error)
            except Exception as error:  # a malformed answer is that source unread, never a 500
                log.warning(json.dumps({"event": "fhir-read-failed", "key": key, "error": type(error).__name__}))
                value, problem = None, f"the FHIR server's answer could not be read ({type(error).__name__})"
            return key, value, problem, (time.perf_counter() - started) * 1000

        pool = self._pool(allowed_server)
        futures = {pool.submit(task, key): key for key in wanted}
        done, pending = wait(futures, timeout=max(budget.left(), 0))
        for future in pending:
            future.cancel()
            data.unread[futures[future]] = "the FHIR server did not answer within the time budget"
        for future in done:
            key, value, problem, elapsed_ms = future.result()
            timings[key] = elapsed_ms
            if problem:
                data.unread[key] = problem
                continue
            data.unread.pop(key, None)
            read_prefetch_value(key, value, data, patient_id)  # only context.patientId's resources
        log_other_patient(body.get("hookInstance"), "fhir-server", data.other_patient - left_out_before)
        return timings


def _render(template: str, context: dict) -> str:
    """A prefetch template with its {{context.x}} tokens filled (URL-encoded)."""
    out = template
    for name, value in context.items():
        token = f"{{{{context.{name}}}}}"
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


def log_fetch(hook_instance: str, base: str, timings: dict, data: ClinicalData) -> None:
    log.info(
        json.dumps(
            {
                "event": "fhir-fetch",
                "hookInstance": hook_instance,
                "fhirServer": describe_host(base),
                "timings_ms": {k: round(v, 1) for k, v in timings.items()},
                "unread": sorted(data.unread),
            }
        )
    )
