"""Bad input never breaks a hook: property-based requests, malformed resources, concurrent feedback."""
from __future__ import annotations

import copy
import json
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from hypothesis import HealthCheck, given, settings, strategies as st

from cds_service import fixtures

SELECT = "/cds-services/spine-mri-order-select"
BASE_REQUEST = fixtures.hook_request("lbp-radic-failed-pt", "order-select")

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=20)
FHIR_KEYS = ["resourceType", "id", "status", "code", "coding", "system", "valueQuantity", "value", "unit",
             "clinicalStatus", "verificationStatus", "onsetDateTime", "recordedDate", "effectiveDateTime",
             "medicationCodeableConcept", "medicationReference", "dispenseRequest", "dosageInstruction",
             "performedDateTime", "performedPeriod", "reasonCode", "entry", "resource", "birthDate", "gender"]


def fhir_like():
    """Resources with the right keys and wrong shapes: the malformed data EHRs really send."""
    return st.fixed_dictionaries(
        {"resourceType": st.sampled_from(["Condition", "Observation", "MedicationRequest", "Procedure",
                                          "Patient", "DiagnosticReport", "Bundle", "OperationOutcome", 7])},
        optional={key: json_value for key in FHIR_KEYS[1:]})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resources=st.lists(fhir_like(), max_size=6), key=st.sampled_from(
    ["conditions", "observations", "medications", "procedures", "diagnosticReports", "patient"]))
def test_malformed_resources_never_break_the_hook(client, response_validator, resources, key):
    body = copy.deepcopy(BASE_REQUEST)
    if key == "patient":
        body["prefetch"]["patient"] = resources[0] if resources else None
    else:
        body["prefetch"][key]["entry"] += [{"resource": r} for r in resources]
    reply = client.post(SELECT, json=body)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    response_validator.validate(reply.get_json())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([("hook",), ("hookInstance",), ("context",), ("prefetch",), ("context", "patientId"),
                             ("context", "selections"), ("context", "draftOrders"), ("context", "draftOrders", "entry"),
                             ("fhirAuthorization",)]),
       value=json_value)
def test_malformed_requests_get_200_or_400_never_500(client, response_validator, path, value):
    body = copy.deepcopy(BASE_REQUEST)
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    reply = client.post(SELECT, json=body)
    # 412: a prefetch emptied by the mutation leaves nothing to judge (no FHIR server allowed here)
    assert reply.status_code in (200, 400, 412), reply.get_data(as_text=True)
    if reply.status_code == 200:
        response_validator.validate(reply.get_json())
    else:
        assert reply.get_json()["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_bytes_never_500(client, raw):
    reply = client.post(SELECT, data=raw, content_type="application/json")
    assert reply.status_code in (200, 400)


def test_hundreds_of_concurrent_feedback_posts_are_each_stored_once(live_server):
    url = live_server["base"] + SELECT + "/feedback"
    body = fixtures.hook_request("lbp-osteoporosis")

    def send(_):
        # feedback right after its card: the card may still be in the evaluation writer's queue
        card = requests.post(live_server["base"] + SELECT, json=body, timeout=30).json()["cards"][0]
        item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-22T10:00:00Z"}
        first = requests.post(url, json={"feedback": [item]}, timeout=30)
        retry = requests.post(url, json={"feedback": [item]}, timeout=30)  # a client retry
        return card["uuid"], (first.status_code, first.json().get("stored"), retry.status_code, retry.json().get("stored"))

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(send, range(300)))
    outcomes = [outcome for _, outcome in results]
    assert all(r == (200, 1, 200, 0) for r in outcomes), [r for r in outcomes if r != (200, 1, 200, 0)][:5]
    with sqlite3.connect(live_server["db"]) as connection:
        stored = connection.execute("SELECT card_uuid, COUNT(*) FROM feedback GROUP BY card_uuid").fetchall()
    counts = dict(stored)
    assert all(counts.get(card) == 1 for card, _ in results)


def test_live_server_answers_every_fixture(live_server, response_validator):
    session = requests.Session()
    for case in fixtures.manifest():
        reply = session.post(live_server["base"] + SELECT, json=fixtures.hook_request(case["patient"]), timeout=10)
        assert reply.status_code == 200
        response_validator.validate(reply.json())


def test_logs_carry_no_token_and_no_patient_name(tmp_path, caplog, captured_sandbox):
    import logging

    from cds_service.app import create_app
    from cds_service.config import Settings

    settings_ = Settings(feedback_db=tmp_path / "f.sqlite3", mappings_dir=None, max_body_bytes=10 ** 7,
                         cors_origins="*", bench_bare_endpoint=False, log_level="INFO", allow_unauthenticated=True)
    client = create_app(settings_).test_client()
    body = copy.deepcopy(captured_sandbox["order_select"])
    body["fhirAuthorization"] = {"access_token": "SECRET-ACCESS-TOKEN", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds-service"}
    with caplog.at_level(logging.INFO):
        client.post(SELECT, json=body, headers={"Authorization": "Bearer eyJhbGciOi.SECRET.JWT"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "hookInstance" in text
    assert "SECRET" not in text and "Lumbar" not in text and "Lena" not in text
    assert json.dumps(body["hookInstance"])[1:-1] in text


def test_ids_are_unique_version_4_uuids_and_differ_after_fork():
    import os
    import uuid as uuid_module

    from cds_service.ids import new_uuid

    made = [new_uuid() for _ in range(5000)]  # more than one pool of kernel randomness
    assert len(set(made)) == len(made)
    assert all(uuid_module.UUID(value).version == 4 for value in made[:50])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child deals from a fresh pool, never the parent's next bytes
        os.write(write, new_uuid().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    assert child != new_uuid() and child not in made
