"""A hostile FHIR server must not speak through the service, bloat it or hold its workers.

Each test starts a small threaded HTTP server on loopback that misbehaves the way the red-team
run found (redirects to another host, next links that leave the server, endless or gzip-bomb
answers, a byte at a time) and checks what the service did with it. The honest server is
sekmet (tests/test_fhir_fallback.py); these behaviours are the ones it cannot be made to show.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from apps import app_settings
from evidence_pages import evaluate_with_evidence
from stub_servers import QuietHTTPServer
from timing import late_by

from cds_service.cli import fixtures
from cds_service.fhir.client import FhirFetcher, FhirSettings
from cds_service.fhir.outbound import describe_host, within
from cds_service.fhir.prefetch import from_prefetch
from cds_service.hooks.discovery import prefetch_templates
from cds_service.hooks.evaluation import evaluate_hook

SELECT = "spine-mri-order-select"
EMPTY_BUNDLE = {"resourceType": "Bundle", "type": "searchset", "entry": []}
# lbp-cauda-equina's conditions as if they were lbp-acute-simple's (request_reading's patient): only
# the context patient's resources are read (tests/test_other_patient.py)
CAUDA_EQUINA_CONDITIONS = json.loads(
    json.dumps(fixtures.hook_request("lbp-cauda-equina")["prefetch"]["conditions"]).replace(
        '"Patient/lbp-cauda-equina"', '"Patient/lbp-acute-simple"'
    )
)


class Hostile:
    """A loopback HTTP server answering every GET with `behaviour(handler)`.

    It records each request's path and Authorization header, and sets `hung_up` when writing to
    the client fails: the client closed the connection.
    """

    def __init__(self, behaviour, port: int = 0):
        owner = self
        self.behaviour = behaviour
        self.requests: list[tuple[str, str]] = []
        self.hung_up = threading.Event()
        self.bytes_sent = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Authorization", "")))
                try:
                    owner.behaviour(self)
                except OSError:
                    owner.hung_up.set()

        self.server = QuietHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def send(self, handler, chunk: bytes) -> None:
        handler.wfile.write(chunk)
        handler.wfile.flush()
        self.bytes_sent += len(chunk)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answer(handler, status: int, body: dict | bytes, headers: dict | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def fhir_answer(handler, planted: dict | None = None) -> None:
    """What an honest server would answer for the service's queries: the Patient, else a Bundle."""
    resource = handler.path.split("?")[0].rstrip("/").split("/")[-1]
    if resource.startswith("lbp-"):  # Patient/<id>
        answer(handler, 200, {"resourceType": "Patient", "id": resource, "gender": "male", "birthDate": "1980-01-01"})
    elif resource == "Condition" and planted is not None:
        answer(handler, 200, planted)
    else:
        answer(handler, 200, EMPTY_BUNDLE)


@pytest.fixture
def hostile():
    servers = []

    def start(behaviour, port: int = 0) -> Hostile:
        servers.append(Hostile(behaviour, port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def fetcher_for(*bases, budget=2.0, max_bytes=16 * 1024 * 1024, concurrency=8) -> FhirFetcher:
    return FhirFetcher(
        FhirSettings(
            allowed_servers=frozenset(bases),
            budget_seconds=budget,
            concurrency=concurrency,
            max_response_bytes=max_bytes,
        )
    )


def request_reading(base: str, missing=("conditions",), token: str | None = "the-access-token") -> dict:
    """lbp-acute-simple (low-value with its full prefetch) with `missing` left for the FHIR server."""
    body = fixtures.hook_request("lbp-acute-simple")
    body["fhirServer"] = base
    for key in missing:
        del body["prefetch"][key]
    if token is not None:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        }
    return body


def read_one(fetcher: FhirFetcher, body: dict, key: str, mappings) -> tuple[list, str | None]:
    data = from_prefetch(body["prefetch"])
    fetcher.fill(data, body, prefetch_templates(mappings), [key])
    return data.of(key), data.unread.get(key)


# ------------------------------------------------------------------ one check for every URL


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir",
        "https://ehr.example.org/fhir/",
        "https://EHR.example.org/fhir/Condition?x=1",
        "https://ehr.example.org:443/fhir/Condition",
        "https://ehr.example.org/fhir?_getpages=abc",
        "https://ehr.example.org/fhir/Condition?page=../..;/admin//x",  # the query is not the path
        "https://ehr.example.org/fhir/Patient/abc.def-1",  # dots inside a segment are no dot segment
        "https://ehr.example.org/%66hir/Condition",  # an encoded unreserved letter is that letter
        "https://ehr.example.org/fhir/Condition/",
    ],
)
def test_within_accepts_the_same_server_under_the_base(url):
    assert within(url, "https://ehr.example.org/fhir")


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org.evil.test/fhir/Condition",  # a longer host
        "https://ehr.example.org@evil.test/fhir/Condition",  # userinfo: the request goes to evil.test
        "https://ehr.example.org:8443/fhir/Condition",  # another port
        "https://ehr.example.org:4430/fhir/Condition",  # a port the base's default 443 is a prefix of
        "http://ehr.example.org/fhir/Condition",  # another scheme
        "https://ehr.example.org/fhir2/Condition",  # a path that only starts with the base path's text
        "https://ehr.example.org/other/Condition",
        "https://ehr.example.org/fhir/../admin",
        "https://ehr.example.org/fhir/%2e%2e/admin",
        "https://ehr.example.org/fhir/a%2F..%2F..%2Fadmin",
        # every other spelling of a dot segment, a path parameter or an empty segment (issue 18, item 5)
        "https://ehr.example.org/fhir/..;/admin",  # Tomcat and Spring read "..;" as ".."
        "https://ehr.example.org/fhir/..%3B/admin",
        "https://ehr.example.org/fhir/%2e%2e;/admin",
        "https://ehr.example.org/fhir/.%2E/admin",
        "https://ehr.example.org/fhir/%2E./admin",
        "https://ehr.example.org/fhir/%252e%252e/admin",  # encoded twice, for a server that decodes twice
        "https://ehr.example.org/fhir/%c0%ae%c0%ae/admin",  # overlong UTF-8 dots
        "https://ehr.example.org/fhir/\uff0e\uff0e/admin",  # fullwidth dots, NFKC-folded by some servers
        "https://ehr.example.org/fhir/./Condition",
        "https://ehr.example.org/fhir/Condition/../Condition",  # a `..` that stays under the base: still refused
        "https://ehr.example.org/fhir//admin",
        "https://ehr.example.org/fhir//evil.test/Condition",
        "https://ehr.example.org/fhir/;x=1/Condition",
        "https://ehr.example.org/fhir;jsessionid=1/Condition",
        "https://ehr.example.org/fhir/Condition;.css",
        "https://ehr.example.org\\@evil.test/fhir",
        "https://ehr.example.org/fhir/\r\nHost: evil",
        "javascript:alert(1)",
        "//evil.test/fhir",
        "",
        None,
        42,
    ],
)
def test_within_refuses_other_servers_and_escapes(url):
    assert not within(url, "https://ehr.example.org/fhir")


def test_within_compares_ports_exactly_for_a_base_without_path():
    assert within("http://127.0.0.1:8080/Condition", "http://127.0.0.1:8080")
    assert not within("http://127.0.0.1:80801/Condition", "http://127.0.0.1:8080")
    assert not within("http://127.0.0.1:8080.evil.test/Condition", "http://127.0.0.1:8080")


def test_fhir_server_under_an_allowed_base_is_allowed_and_lookalikes_are_not():
    settings = FhirSettings(allowed_servers=frozenset({"https://ehr.example.org/fhir"}))
    assert settings.allows("https://ehr.example.org/fhir/")
    assert settings.allows("https://ehr.example.org/fhir/tenant-2")
    for other in (
        "https://ehr.example.org/fhir?x=1",
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org.evil.test/fhir",
        "https://ehr.example.org/fhirx",
    ):
        assert not settings.allows(other), other


def test_credentials_in_a_fhir_server_url_are_never_shown(client, caplog):
    secret_url = "https://clinician:hunter2-password@ehr.example.org/fhir?access_token=SECRET-IN-QUERY"
    assert describe_host(secret_url) == "https://ehr.example.org/fhir"
    body = request_reading(secret_url, missing=("medications",), token=None)
    with caplog.at_level(logging.INFO):
        reply = client.post(f"/cds-services/{SELECT}", json=body)
    shown = reply.get_data(as_text=True) + "\n".join(record.getMessage() for record in caplog.records)
    assert "ehr.example.org/fhir" in shown  # the server is named ...
    assert "hunter2" not in shown and "SECRET-IN-QUERY" not in shown  # ... its credentials are not


# ------------------------------------------------------------------ redirects and next links


def test_redirect_to_another_host_is_not_followed(hostile, mappings):
    planted = hostile(lambda handler: fhir_answer(handler, planted=CAUDA_EQUINA_CONDITIONS))
    redirecting = hostile(lambda handler: answer(handler, 302, b"", {"Location": planted.url + handler.path}))
    base = redirecting.url + "/fhir"
    result, evidence = evaluate_with_evidence(SELECT, request_reading(base), mappings, fetcher=fetcher_for(base))
    # Followed, the planted cauda equina would have made this order "indicated-urgent".
    assert result.evaluations[0].verdict == "insufficient-information"
    assert "redirected outside its base" in evidence
    assert planted.requests == []


@pytest.mark.parametrize("status", [301, 307, 308])
def test_redirect_within_the_base_is_followed(hostile, mappings, status):
    def behaviour(handler):
        if "moved=1" in handler.path:
            fhir_answer(handler, planted=CAUDA_EQUINA_CONDITIONS)
        else:
            answer(handler, status, b"", {"Location": handler.path + "&moved=1"})

    server = hostile(behaviour)
    base = server.url + "/fhir"
    result = evaluate_hook(SELECT, request_reading(base), mappings, fetcher=fetcher_for(base))
    assert result.evaluations[0].verdict == "indicated-urgent"
    assert [auth for _, auth in server.requests] == ["Bearer the-access-token"] * 2


def test_next_link_with_userinfo_to_another_host_gets_nothing(hostile, mappings):
    elsewhere = hostile(fhir_answer)
    origin = hostile(
        lambda handler: answer(
            handler,
            200,
            {
                **EMPTY_BUNDLE,
                "link": [
                    {
                        "relation": "next",
                        "url": f"http://127.0.0.1:{origin.port}@127.0.0.1:{elsewhere.port}/Condition?p=2",
                    }
                ],
            },
        )
    )
    base = origin.url  # an allowlisted base without a path
    _resources, unread = read_one(fetcher_for(base), request_reading(base), "conditions", mappings)
    assert unread == "a next link points away from the FHIR server; not followed"
    assert elsewhere.requests == []


@pytest.mark.parametrize("escape", ["..;", "%2e%2e;", "..%3b", "", ";x=1/.."])
def test_next_link_leaving_the_base_path_on_the_same_host_gets_nothing(hostile, mappings, escape):
    """A next link on the right host whose path leaves the base (`/fhir/..;/admin/...`, `/fhir//...`)
    is not followed: the bearer token goes to the base's path only."""

    def behaviour(handler):
        if handler.path.startswith("/fhir/Condition"):
            next_url = f"{server.url}/fhir/{escape}/admin/Condition?p=2"
            answer(handler, 200, {**EMPTY_BUNDLE, "link": [{"relation": "next", "url": next_url}]})
        else:
            fhir_answer(handler, planted=CAUDA_EQUINA_CONDITIONS)

    server = hostile(behaviour)
    base = server.url + "/fhir"
    _resources, unread = read_one(fetcher_for(base), request_reading(base), "conditions", mappings)
    assert unread == "a next link points away from the FHIR server; not followed"
    assert [path for path, _ in server.requests if "admin" in path] == []


def _port_pair() -> tuple[int, int]:
    """Two free ports where the first one's digits begin the second's (like 8080 and 80801)."""
    for _ in range(200):
        with socket.socket() as longer, socket.socket() as shorter:
            longer.bind(("127.0.0.1", 0))
            port = longer.getsockname()[1]
            try:
                shorter.bind(("127.0.0.1", int(str(port)[:-1])))
            except OSError:
                continue
            return shorter.getsockname()[1], port
    raise RuntimeError("no pair of free ports found")


def test_next_link_to_a_port_the_base_port_is_a_prefix_of_gets_nothing(hostile, mappings):
    shorter, longer = _port_pair()
    elsewhere = hostile(fhir_answer, port=longer)
    origin = hostile(
        lambda handler: answer(
            handler,
            200,
            {**EMPTY_BUNDLE, "link": [{"relation": "next", "url": f"http://127.0.0.1:{longer}/Condition?p=2"}]},
        ),
        port=shorter,
    )
    _resources, unread = read_one(fetcher_for(origin.url), request_reading(origin.url), "conditions", mappings)
    assert unread == "a next link points away from the FHIR server; not followed"
    assert elsewhere.requests == []


# ------------------------------------------------------------------ size and time of one answer


def endless(server: Hostile):
    def behaviour(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Connection", "close")  # no length: the body ends when the server closes
        handler.end_headers()
        server.send(handler, b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
        entry = json.dumps({"resource": {"resourceType": "Condition", "id": "x" * 200}}).encode() + b","
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: a minute at most, far past any budget
            server.send(handler, entry * 64)

    return behaviour


def test_endless_answer_is_cut_at_the_size_limit(hostile, mappings):
    server = hostile(lambda handler: endless(server)(handler))
    fetcher = fetcher_for(server.url, budget=20, max_bytes=1024 * 1024)
    _resources, unread = read_one(fetcher, request_reading(server.url), "conditions", mappings)
    assert unread == ("the FHIR server sent an answer larger than 1048576 bytes (CDS_FHIR_MAX_RESPONSE_BYTES)")
    assert server.hung_up.wait(30), "the service kept reading an endless answer"
    assert server.bytes_sent < 64 * 1024 * 1024


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """200 MB of valid FHIR JSON (a Bundle padded with spaces), about 200 KB gzipped."""
    padding = b" " * (200 * 1024 * 1024)
    return gzip.compress(
        b'{"resourceType": "Bundle", "type": "searchset", "entry": [' + padding + b"]}", compresslevel=9
    )


def test_gzip_bomb_is_refused_at_the_size_limit_of_the_decoded_answer(hostile, mappings, gzip_bomb):
    server = hostile(lambda handler: answer(handler, 200, gzip_bomb, {"Content-Encoding": "gzip"}))
    fetcher = fetcher_for(server.url, budget=20, max_bytes=1024 * 1024)
    _resources, unread = read_one(fetcher, request_reading(server.url), "conditions", mappings)
    # Inflated whole, the 200 MB would parse as an empty Bundle and the key would count as read.
    assert unread == "the FHIR server sent an answer larger than 1048576 bytes (CDS_FHIR_MAX_RESPONSE_BYTES)"


def test_gzip_answers_within_the_limit_are_read(hostile, mappings):
    compressed = gzip.compress(json.dumps(CAUDA_EQUINA_CONDITIONS).encode())
    server = hostile(lambda handler: answer(handler, 200, compressed, {"Content-Encoding": "gzip"}))
    resources, unread = read_one(fetcher_for(server.url), request_reading(server.url), "conditions", mappings)
    assert unread is None and len(resources) == len(CAUDA_EQUINA_CONDITIONS["entry"])


def trickle(server: Hostile, head: bytes, then: bytes):
    """Send `head` at once, then `then` a byte every 0.1 s (each read well inside any socket timeout)."""

    def behaviour(handler):
        server.send(handler, head)
        deadline = time.monotonic() + 30
        for index in range(len(then)):
            if time.monotonic() > deadline:
                return
            server.send(handler, then[index : index + 1])
            time.sleep(0.1)

    return behaviour


BODY = json.dumps(EMPTY_BUNDLE).encode() * 100


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_byte_at_a_time_is_cut_at_the_budget_and_frees_the_worker(hostile, mappings, part):
    if part == "headers":
        head, then = b"HTTP/1.1 200 OK\r\n", b"X-Padding: " + b"a" * 1000 + b"\r\n\r\n" + BODY
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        then = BODY
    server = hostile(lambda handler: trickle(server, head, then)(handler))
    fetcher = fetcher_for(server.url, budget=1.0, concurrency=1)
    _resources, unread = read_one(fetcher, request_reading(server.url), "conditions", mappings)
    assert unread == "the FHIR server did not answer within the time budget"
    # The worker let go of the connection (the server's next byte fails), not 100+ s later (30 s: room
    # for a loaded machine, far short of the trickle's end).
    assert server.hung_up.wait(30), "the FHIR worker still reads from the trickling server"


# ------------------------------------------------------------------ one budget per hook, all reads together

MIB = 1024 * 1024
PAGED_KEYS = ["conditions", "observations", "medications", "procedures", "imagingStudies", "diagnosticReports"]


def endless_pages(page_bytes: int, delay: float = 0.0, unavailable_every: int = 0):
    """Every search answers a page of about `page_bytes` whose next link leads to another page, for
    ever (a server paging a huge record); reads of Patient/<id> answer the patient. `delay`: seconds
    before each answer; `unavailable_every`: every n-th request answers 503 with Retry-After: 0."""
    pages: dict[str, bytes] = {}
    served = [0]

    def behaviour(handler):
        served[0] += 1
        if delay:
            time.sleep(delay)
        if unavailable_every and served[0] % unavailable_every == 0:
            return answer(handler, 503, {"resourceType": "OperationOutcome", "issue": []}, {"Retry-After": "0"})
        path, _, query = handler.path.partition("?")
        kind = path.rstrip("/").split("/")[-1]
        if kind.startswith("lbp-"):
            return fhir_answer(handler)
        if kind not in pages:
            resource = {"resourceType": kind, "id": "r", "subject": {"reference": "Patient/lbp-acute-simple"}}
            entry = json.dumps({"resource": {**resource, "note": [{"text": "x" * 400}]}})
            count = max(1, page_bytes // (len(entry) + 1))
            pages[kind] = (
                '{"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": "'
                + f"http://{handler.headers['Host']}{path}?page=NEXT"
                + '"}], "entry": ['
                + ",".join([entry] * count)
                + "]}"
            ).encode()
        page = int(query.split("page=")[1]) if "page=" in query else 0
        answer(handler, 200, pages[kind].replace(b"page=NEXT", b"page=%d" % (page + 1)))

    return behaviour


def test_all_queries_and_pages_of_a_hook_share_one_byte_budget(hostile, mappings):
    """Issue 18, item 6: every query paging 1 MiB answers (each within CDS_FHIR_MAX_RESPONSE_BYTES)
    used to be read up to the page cap, 20 pages per query; now the hook stops reading at
    CDS_FHIR_BUDGET_BYTES, all queries and pages together."""
    server = hostile(endless_pages(MIB))
    fetcher = FhirFetcher(
        FhirSettings(
            allowed_servers=frozenset({server.url}),
            budget_seconds=60,  # far away: only the byte budget may stop these reads
            max_response_bytes=16 * MIB,
            budget_bytes=4 * MIB,
        )
    )
    body = request_reading(server.url, missing=PAGED_KEYS)
    data = from_prefetch(body["prefetch"])
    fetcher.fill(data, body, prefetch_templates(mappings), PAGED_KEYS)
    searches = [path for path, _ in server.requests]
    # 4 MiB at most, plus the page each concurrent query had started when the budget ran out
    assert len(searches) <= 4 + len(PAGED_KEYS), len(searches)
    for key in PAGED_KEYS:
        assert "CDS_FHIR_BUDGET_BYTES" in data.unread[key], data.unread[key]


def test_the_byte_budget_leaves_what_was_read_within_it(hostile, mappings):
    """A hook whose answers fit the budget reads them all; one query going past it stays unread alone.
    The large query's pages come only once every small query was answered, and slowly (0.2 s a
    page), so the small ones are read before the budget runs out, whatever the machine's load."""
    small_answered = threading.Semaphore(0)
    large = endless_pages(MIB, delay=0.2)
    gate = threading.Event()

    def behaviour(handler):
        if not handler.path.startswith("/Observation"):
            answer(handler, 200, EMPTY_BUNDLE)
            small_answered.release()
            return
        if not gate.is_set():
            for _ in range(len(PAGED_KEYS) - 1):
                small_answered.acquire(timeout=60)
            gate.set()
        large(handler)

    server = hostile(behaviour)
    fetcher = FhirFetcher(
        FhirSettings(allowed_servers=frozenset({server.url}), budget_seconds=120, budget_bytes=3 * MIB)
    )
    body = request_reading(server.url, missing=PAGED_KEYS)
    data = from_prefetch(body["prefetch"])
    fetcher.fill(data, body, prefetch_templates(mappings), PAGED_KEYS)
    assert set(data.unread) == {"observations"}, data.unread
    assert "CDS_FHIR_BUDGET_BYTES" in data.unread["observations"]


def test_the_time_budget_holds_across_pages_and_retries(hostile, mappings):
    """Pages answered after 0.1 s each, with a 503 (Retry-After: 0) every third request, for ever:
    every query stops at the hook's time budget, not at the page cap (20 pages and their retries
    would take over 3 s a query), and nothing is asked of the server after the deadline."""
    server = hostile(endless_pages(2048, delay=0.1, unavailable_every=3))
    budget = 1.0
    fetcher = FhirFetcher(
        FhirSettings(allowed_servers=frozenset({server.url}), budget_seconds=budget, concurrency=len(PAGED_KEYS))
    )
    body = request_reading(server.url, missing=PAGED_KEYS)
    data = from_prefetch(body["prefetch"])
    started = time.monotonic()
    fetcher.fill(data, body, prefetch_templates(mappings), PAGED_KEYS)
    elapsed = time.monotonic() - started
    asked = len(server.requests)
    time.sleep(0.5)
    for key in PAGED_KEYS:
        # cut at the deadline; or, when a 503 came with no time left for its retry, that 503
        assert data.unread[key] in (
            "the FHIR server did not answer within the time budget",
            "the FHIR server answered an error (no detail given)",
        ), data.unread[key]
    assert len(server.requests) <= asked + len(PAGED_KEYS)  # no query goes on paging after the hook
    assert elapsed < budget + late_by()  # what this machine's load adds to a wait, measured now


# ------------------------------------------------------------------ the hook's own access token


@pytest.mark.parametrize(
    "token",
    [
        "\u65e5\u672c\u8a9e-token",
        "t\u00f6ken-latin-1",
        "line\r\nX-Injected: 1",
        "nul\x00byte",
        "with space",
        ["a", "list"],
    ],
)
def test_an_access_token_that_cannot_be_a_header_is_400_and_never_sent(hostile, tmp_path, token):
    from cds_service.web.app import create_app

    server = hostile(fhir_answer)
    settings = app_settings(
        tmp_path,
        allow_unauthenticated=True,
        fhir=FhirSettings(allowed_servers=frozenset({server.url})),
    )
    reply = (
        create_app(settings)
        .test_client()
        .post(f"/cds-services/{SELECT}", json=request_reading(server.url, token=token))
    )
    assert reply.status_code == 400
    assert "fhirAuthorization.access_token" in reply.get_json()["error"]
    if isinstance(token, str):
        assert token not in reply.get_data(as_text=True)
    assert server.requests == []


@pytest.mark.parametrize(
    "entry",
    [
        "https://clinician:secret-pw@ehr.example.org/fhir",
        "ftp://ehr.example.org/fhir",
        "https://ehr.example.org/fhir?tenant=1",
        "ehr.example.org/fhir",
    ],
)
def test_an_allowlist_entry_that_is_not_a_base_url_stops_the_service_in_one_line(monkeypatch, entry):
    from cds_service.web.config import Settings

    monkeypatch.setenv("CDS_FHIR_ALLOWED_SERVERS", f"https://good.example.org/fhir,{entry}")
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()
    message = str(stopped.value)
    assert message.startswith("setting CDS_FHIR_ALLOWED_SERVERS:") and "\n" not in message
    assert "secret-pw" not in message


@pytest.mark.parametrize(
    "malformed",
    [
        {"resourceType": "Bundle", "type": "searchset", "link": 5},
        {"resourceType": "Bundle", "type": "searchset", "entry": "not-a-list"},
        {"resourceType": "OperationOutcome", "issue": 5},
    ],
)
def test_a_malformed_answer_is_that_source_unread_never_a_500(hostile, mappings, malformed):
    server = hostile(lambda handler: answer(handler, 200, malformed))
    resources, unread = read_one(fetcher_for(server.url), request_reading(server.url), "conditions", mappings)
    assert resources == [] and unread


def test_the_byte_budget_is_a_setting(monkeypatch):
    from cds_service.web.config import Settings

    assert Settings.from_env().fhir.budget_bytes == 16 * MIB
    monkeypatch.setenv("CDS_FHIR_BUDGET_BYTES", str(4 * MIB))
    assert Settings.from_env().fhir.budget_bytes == 4 * MIB
    monkeypatch.setenv("CDS_FHIR_BUDGET_BYTES", "lots")
    with pytest.raises(SystemExit, match="CDS_FHIR_BUDGET_BYTES"):
        Settings.from_env()


def test_a_stub_server_is_quiet_when_the_service_hangs_up(hostile, mappings, capfd):
    """Issue 18, item 10: the service hanging up on a stub (an answer cut at the byte budget, a
    connection reset while the stub waits for its next request) left a traceback per connection
    on stderr; one failing test printed 6,000 lines of them."""
    server = hostile(endless_pages(MIB))
    fetcher = FhirFetcher(
        FhirSettings(allowed_servers=frozenset({server.url}), budget_seconds=60, budget_bytes=2 * MIB)
    )
    body = request_reading(server.url, missing=PAGED_KEYS)
    data = from_prefetch(body["prefetch"])
    fetcher.fill(data, body, prefetch_templates(mappings), PAGED_KEYS)
    fetcher.outbound.session.close()  # every pooled connection the stub still waits on, reset
    time.sleep(0.5)  # the stub's threads see their clients gone
    assert "Traceback" not in capfd.readouterr().err
