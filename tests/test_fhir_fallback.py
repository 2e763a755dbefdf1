"""The FHIR-server fallback against a real FHIR server on loopback, and its faults.

The server is sekmet-fhir (installed by scripts/bootstrap.sh in .venv-fhir), seeded with every
fixture patient. Faults the real server cannot be made to show (slow, 5xx, 401, garbage) come
from a small stub HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest
import requests
from apps import app_settings
from evidence_pages import evaluate_with_evidence, evidence_page_of
from stub_servers import QuietHTTPServer
from timing import late_by

from cds_service.cli import fixtures
from cds_service.cli.local_fhir import LocalFhirServer, seed_bundle
from cds_service.cli.processes import free_port
from cds_service.clinical.record import EXPECTED_TYPES
from cds_service.fhir.client import FhirFetcher, FhirSettings
from cds_service.hooks.evaluation import evaluate_hook
from cds_service.hooks.request import HookRequestError

MANIFEST = fixtures.manifest()


@pytest.fixture(scope="module")
def fhir_server():
    server = LocalFhirServer(free_port())
    try:
        base = server.start()
    except RuntimeError as error:
        pytest.fail(f"{error} (scripts/test.sh installs it)")
    session = requests.Session()
    for case in MANIFEST:
        seed_bundle(base, fixtures.patient_bundle(case["patient"]), session)
    yield server
    server.stop()


def fetcher_for(*bases, budget=2.0, max_pages=20) -> FhirFetcher:
    return FhirFetcher(
        FhirSettings(
            allowed_servers=frozenset(b.rstrip("/") for b in bases),
            budget_seconds=budget,
            max_pages=max_pages,
            concurrency=8,
        )
    )


def without_prefetch(patient_id: str, base: str, hook: str = "order-select", keep=()) -> dict:
    body = fixtures.hook_request(patient_id, hook)
    body["fhirServer"] = base
    body["prefetch"] = {key: value for key, value in body["prefetch"].items() if key in keep}
    return body


# ------------------------------------------------------------------ the server we rely on


def test_fhir_server_contract(fhir_server, mappings):
    """The searches the service relies on behave as on HAPI: a failure here is the package, not us."""
    from cds_service.hooks.discovery import prefetch_templates

    base = fhir_server.base_url
    session = requests.Session()
    templates = prefetch_templates(mappings)
    patient = "lbp-radic-failed-pt"
    for key, template in templates.items():
        reply = session.get(
            f"{base}/{template.replace('{{context.patientId}}', patient)}",
            headers={"Prefer": "handling=strict"},
            timeout=10,
        )
        assert reply.status_code == 200, (key, reply.text[:300])
        body = reply.json()
        expected = "Patient" if key == "patient" else "Bundle"
        assert body["resourceType"] == expected, key
    procedures = session.get(f"{base}/Procedure?patient={patient}&_count=4", timeout=10).json()
    assert len(procedures["entry"]) == 4
    assert any(link["relation"] == "next" for link in procedures["link"])
    observations = session.get(
        f"{base}/Observation?patient=lbp-fever-ivdu&code=http://loinc.org|8310-5", timeout=10
    ).json()
    assert [e["resource"]["code"]["coding"][0]["code"] for e in observations["entry"]] == ["8310-5"]
    strict = session.get(
        f"{base}/Condition?patient={patient}&no-such-param=1", headers={"Prefer": "handling=strict"}, timeout=10
    )
    assert strict.status_code >= 400 or strict.json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------ same verdicts without prefetch


@pytest.mark.parametrize("case", MANIFEST, ids=[c["patient"] for c in MANIFEST])
def test_fallback_gives_the_same_verdict_as_full_prefetch(fhir_server, mappings, case):
    fetcher = fetcher_for(fhir_server.base_url)
    full = evaluate_hook("spine-mri-order-select", fixtures.hook_request(case["patient"]), mappings)
    fetched = evaluate_hook(
        "spine-mri-order-select", without_prefetch(case["patient"], fhir_server.base_url), mappings, fetcher=fetcher
    )
    assert [e.verdict for e in fetched.evaluations] == [case["expected_verdict"]]
    assert [e.verdict for e in fetched.evaluations] == [e.verdict for e in full.evaluations]


def test_partial_prefetch_is_completed_from_the_server(fhir_server, mappings):
    body = without_prefetch("lbp-fever-ivdu", fhir_server.base_url, keep=("patient", "conditions"))
    result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(fhir_server.base_url))
    assert result.evaluations[0].verdict == "indicated-urgent"
    assert result.timings_ms["fhir"] > 0


def test_null_prefetch_means_no_data_and_is_not_fetched(fhir_server, mappings):
    body = fixtures.hook_request("lbp-acute-simple")
    body["fhirServer"] = fhir_server.base_url
    body["prefetch"]["observations"] = None
    result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(fhir_server.base_url))
    assert "fhir" not in result.timings_ms
    assert result.evaluations[0].verdict == "low-value"


def test_operation_outcome_prefetch_is_refetched(fhir_server, mappings):
    body = fixtures.hook_request("lbp-fever-ivdu")
    body["fhirServer"] = fhir_server.base_url
    body["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(fhir_server.base_url))
    assert result.evaluations[0].verdict == "indicated-urgent"


def test_server_not_on_the_allowlist_is_never_called(fhir_server, mappings, client):
    body = without_prefetch("lbp-acute-simple", fhir_server.base_url, keep=("patient", "conditions"))
    reply = client.post("/cds-services/spine-mri-order-select", json=body)
    card = reply.get_json()["cards"][0]
    assert card["summary"].startswith("Cannot rate")
    assert "not on this service&#x27;s allowlist" in evidence_page_of(client, card)


@pytest.mark.parametrize(
    "server,why",
    [
        (
            "https://not-allowed.example/fhir",
            "fhirServer is not on this service's allowlist (CDS_FHIR_ALLOWED_SERVERS)",
        ),
        (None, "names no fhirServer"),
    ],
)
def test_412_says_why_the_fhir_server_was_not_read(client, server, why):
    body = without_prefetch("lbp-acute-simple", server, keep=("patient",))
    if server is None:
        del body["fhirServer"]
    reply = client.post("/cds-services/spine-mri-order-select", json=body)
    assert reply.status_code == 412
    missing = reply.get_json()["missing"]
    assert set(missing) == set(EXPECTED_TYPES) - {"patient"}
    assert all(why in reason for reason in missing.values()), missing


def test_http_hook_with_allowed_server(fhir_server, tmp_path):
    from cds_service.web.app import create_app

    settings = app_settings(
        tmp_path,
        allow_unauthenticated=True,
        fhir=FhirSettings(allowed_servers=frozenset({fhir_server.base_url})),
    )
    client = create_app(settings).test_client()
    body = without_prefetch("neck-myelopathy-wwo", fhir_server.base_url)
    body["fhirAuthorization"] = {
        "access_token": "t0k3n",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    response = client.post("/cds-services/spine-mri-order-select", json=body).get_json()
    assert response["cards"][0]["indicator"] == "critical"


# ------------------------------------------------------------------ faults


class StubFhir(BaseHTTPRequestHandler):
    """Paths: /slow/fhir/... sleeps 10 s (far past any budget here), /err/fhir 500, /flaky/fhir 503 then 200,
    /auth/fhir 401, /junk/fhir not JSON,
    /trickle/fhir sends its headers a byte every 0.1 s (for 20 s at most)."""

    calls: ClassVar[dict[str, int]] = {}
    received_auth: ClassVar[list[str]] = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type="application/fhir+json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        mode = self.path.split("/")[1]
        StubFhir.calls[mode] = StubFhir.calls.get(mode, 0) + 1
        StubFhir.received_auth.append(self.headers.get("Authorization", ""))
        resource = self.path.split("/")[3].split("?")[0]
        empty = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()
        if resource == "Patient":
            empty = json.dumps(
                {"resourceType": "Patient", "id": "p", "gender": "male", "birthDate": "1980-01-01"}
            ).encode()
        if mode == "slow":
            time.sleep(10)
            self._send(200, empty)
        elif mode == "err":
            self._send(
                500,
                json.dumps(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "exception", "diagnostics": "database down"}],
                    }
                ).encode(),
            )
        elif mode == "flaky":
            if StubFhir.calls[mode] % 2 == 1:
                self._send(503, b"{}")
            else:
                self._send(200, empty)
        elif mode == "auth":
            self._send(401, json.dumps({"resourceType": "OperationOutcome", "issue": []}).encode())
        elif mode == "junk":
            self._send(200, b"<html>maintenance</html>", "text/html")
        elif mode == "trickle":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for byte in b"X-Padding: " + b"a" * 200:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def stub():
    server = QuietHTTPServer(("127.0.0.1", 0), StubFhir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    "mode,needle",
    [
        ("err", "database down"),
        ("auth", "refused access"),
        ("junk", "not JSON"),
    ],
)
def test_server_failures_leave_data_unread_with_the_reason(stub, mappings, mode, needle):
    base = f"{stub}/{mode}/fhir"
    body = without_prefetch("lbp-acute-simple", base, keep=("patient", "conditions"))
    result, evidence = evaluate_with_evidence("spine-mri-order-select", body, mappings, fetcher=fetcher_for(base))
    assert result.evaluations[0].verdict == "insufficient-information"
    assert needle in evidence


def test_red_flag_in_prefetch_still_rates_when_the_server_fails(stub, mappings):
    base = f"{stub}/err/fhir"
    body = without_prefetch("lbp-cauda-equina", base, keep=("patient", "conditions"))
    result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(base))
    assert result.evaluations[0].verdict == "indicated-urgent"


def test_slow_server_is_cut_at_the_budget(stub, mappings):
    base = f"{stub}/slow/fhir"
    body = without_prefetch("lbp-acute-simple", base, keep=("patient", "conditions"))
    started = time.monotonic()
    result, evidence = evaluate_with_evidence(
        "spine-mri-order-select", body, mappings, fetcher=fetcher_for(base, budget=0.5)
    )
    elapsed = time.monotonic() - started
    assert result.evaluations[0].verdict == "insufficient-information"
    assert "time budget" in evidence
    # the stub sleeps 10 s; the hook ends at its budget, give or take what this machine's load adds now
    assert elapsed < 0.5 + late_by()


def test_retries_on_503(stub, mappings):
    base = f"{stub}/flaky/fhir"
    body = without_prefetch("lbp-acute-simple", base, keep=("patient", "conditions"))
    result = evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(base))
    assert result.evaluations[0].verdict == "low-value"


def test_bearer_token_is_sent_to_the_fhir_server(stub, mappings):
    base = f"{stub}/flaky/fhir"
    body = without_prefetch("lbp-acute-simple", base, keep=("patient", "conditions"))
    body["fhirAuthorization"] = {
        "access_token": "the-token",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    StubFhir.received_auth.clear()
    evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(base))
    assert StubFhir.received_auth and all(a == "Bearer the-token" for a in StubFhir.received_auth)


def test_server_stopped_answers_412_quickly(mappings):
    base = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    body = without_prefetch("lbp-acute-simple", base)
    started = time.monotonic()
    with pytest.raises(HookRequestError) as raised:
        evaluate_hook("spine-mri-order-select", body, mappings, fetcher=fetcher_for(base, budget=20))
    assert raised.value.status == 412
    assert set(raised.value.details["missing"]) == set(EXPECTED_TYPES)
    assert time.monotonic() - started < late_by(floor=1.0)  # refused at once, not at the 20 s budget


def test_a_3000_entry_result_is_paged_through(fhir_server, mappings):
    patient = "lbp-acute-simple"
    entries = []
    for index in range(3000):
        resource = {
            "resourceType": "Observation",
            "id": f"bulk-temp-{index}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": "2020-01-01",
            "valueQuantity": {"value": 36.8, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"},
        }
        entries.append({"resource": resource, "request": {"method": "PUT", "url": f"Observation/bulk-temp-{index}"}})
    seed_bundle(fhir_server.base_url, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    body = without_prefetch(patient, fhir_server.base_url)
    fetcher = fetcher_for(fhir_server.base_url, budget=20)
    from cds_service.fhir.prefetch import from_prefetch
    from cds_service.hooks.discovery import prefetch_templates

    data = from_prefetch(body["prefetch"])
    fetcher.fill(data, body, prefetch_templates(mappings), ["observations"])
    assert len(data.of("observations")) >= 3000
    capped = fetcher_for(fhir_server.base_url, budget=20, max_pages=3)
    data = from_prefetch(body["prefetch"])
    capped.fill(data, body, prefetch_templates(mappings), ["observations"])
    assert "pages" in data.unread["observations"]


def test_a_trickling_server_does_not_starve_hooks_against_another(fhir_server, stub, mappings):
    """Hooks against a server that sends a byte every 0.1 s (each socket read succeeds, none ends),
    arriving all the time, must not take the FHIR workers that hooks against a healthy server need.

    The budget is sized from a healthy hook timed alone in this run, so a loaded machine (a slow
    FHIR server, a slow CPU) gives the healthy hooks time to read: what is proved does not change,
    since with one pool shared by both servers the trickling queries (48 for 4 workers, each held
    for the whole budget) keep every worker busy for longer than any budget and starve them."""
    slow_base, healthy_base = f"{stub}/trickle/fhir", fhir_server.base_url
    cases = [
        case for case in MANIFEST if case["patient"] in ("lbp-cauda-equina", "lbp-acute-simple", "neck-myelopathy-wwo")
    ]
    alone = fetcher_for(healthy_base, budget=60)
    started = time.monotonic()
    for case in cases:
        evaluate_hook(
            "spine-mri-order-select", without_prefetch(case["patient"], healthy_base), mappings, fetcher=alone
        )
    healthy_alone = (time.monotonic() - started) / len(cases)
    budget = max(1.5, 3 * healthy_alone + late_by())
    fetcher = FhirFetcher(
        FhirSettings(allowed_servers=frozenset({slow_base, healthy_base}), budget_seconds=budget, concurrency=4)
    )
    slow_statuses = []
    done = threading.Event()

    def slow_traffic():
        while not done.is_set():
            try:
                evaluate_hook(
                    "spine-mri-order-select", without_prefetch("lbp-acute-simple", slow_base), mappings, fetcher=fetcher
                )
                slow_statuses.append(200)
            except HookRequestError as error:
                slow_statuses.append(error.status)

    StubFhir.calls.pop("trickle", None)
    slow_clients = [
        threading.Thread(target=slow_traffic) for _ in range(6)
    ]  # 48 queries for 4 workers, again and again
    for thread in slow_clients:
        thread.start()
    # the trickling server holds all 4 of its workers before the healthy hooks come
    saturated_by = time.monotonic() + 30
    while StubFhir.calls.get("trickle", 0) < 4 and time.monotonic() < saturated_by:
        time.sleep(0.05)
    assert StubFhir.calls.get("trickle", 0) >= 4
    healthy = {}

    def healthy_hook(case):
        try:
            result = evaluate_hook(
                "spine-mri-order-select", without_prefetch(case["patient"], healthy_base), mappings, fetcher=fetcher
            )
            healthy[case["patient"]] = [e.verdict for e in result.evaluations]
        except HookRequestError as error:  # starved: nothing read in time
            healthy[case["patient"]] = error.status

    healthy_hooks = [threading.Thread(target=healthy_hook, args=(case,)) for case in cases]
    for thread in healthy_hooks:
        thread.start()
    for thread in healthy_hooks:
        thread.join(120)
    done.set()
    for thread in slow_clients:
        thread.join(120)
    assert healthy == {case["patient"]: [case["expected_verdict"]] for case in cases}, (budget, healthy_alone)
    assert slow_statuses and set(slow_statuses) == {412}  # nothing ever came back from the trickling server
