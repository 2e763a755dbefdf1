"""Bad input never breaks a hook: property-based requests, malformed resources, concurrent feedback."""

from __future__ import annotations

import copy
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from apps import app_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.cli import fixtures

SELECT = "/cds-services/spine-mri-order-select"
BASE_REQUEST = fixtures.hook_request("lbp-radic-failed-pt", "order-select")

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20,
)
FHIR_KEYS = [
    "resourceType",
    "id",
    "status",
    "code",
    "coding",
    "system",
    "valueQuantity",
    "value",
    "unit",
    "clinicalStatus",
    "verificationStatus",
    "onsetDateTime",
    "recordedDate",
    "effectiveDateTime",
    "medicationCodeableConcept",
    "medicationReference",
    "dispenseRequest",
    "dosageInstruction",
    "performedDateTime",
    "performedPeriod",
    "reasonCode",
    "entry",
    "resource",
    "birthDate",
    "gender",
]


def fhir_like():
    """Resources with the right keys and wrong shapes: the malformed data EHRs really send."""
    return st.fixed_dictionaries(
        {
            "resourceType": st.sampled_from(
                [
                    "Condition",
                    "Observation",
                    "MedicationRequest",
                    "Procedure",
                    "Patient",
                    "DiagnosticReport",
                    "Bundle",
                    "OperationOutcome",
                    7,
                ]
            )
        },
        optional={key: json_value for key in FHIR_KEYS[1:]},
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    resources=st.lists(fhir_like(), max_size=6),
    key=st.sampled_from(["conditions", "observations", "medications", "procedures", "diagnosticReports", "patient"]),
)
def test_malformed_resources_never_break_the_hook(client, response_validator, resources, key):
    body = copy.deepcopy(BASE_REQUEST)
    if key == "patient":
        body["prefetch"]["patient"] = resources[0] if resources else None
    else:
        body["prefetch"][key]["entry"] += [{"resource": r} for r in resources]
    reply = client.post(SELECT, json=body)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    response_validator.validate(reply.get_json())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    path=st.sampled_from(
        [
            ("hook",),
            ("hookInstance",),
            ("context",),
            ("prefetch",),
            ("context", "patientId"),
            ("context", "selections"),
            ("context", "draftOrders"),
            ("context", "draftOrders", "entry"),
            ("fhirAuthorization",),
        ]
    ),
    value=json_value,
)
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schema=st.sampled_from(["cds-hooks-request", "order-select-context", "order-sign-context"]),
    path=st.sampled_from(
        [
            (),
            ("hook",),
            ("hookInstance",),
            ("context",),
            ("prefetch",),
            ("fhirServer",),
            ("fhirAuthorization",),
            ("fhirAuthorization", "token_type"),
            ("patientId",),
            ("selections",),
            ("draftOrders",),
            ("draftOrders", "resourceType"),
            ("draftOrders", "entry"),
        ]
    ),
    value=json_value,
)
def test_the_fast_schema_check_accepts_only_what_the_reference_validator_accepts(schema, path, value):
    """check_request trusts fastjsonschema's yes and asks jsonschema after its no: a yes that jsonschema
    would refuse would let a malformed request through."""
    from cds_service.hooks.request import _fast_check, _validator

    base = BASE_REQUEST if schema == "cds-hooks-request" else BASE_REQUEST["context"]
    instance = copy.deepcopy(base)
    if path:
        target = instance
        for part in path[:-1]:  # e.g. fhirAuthorization, absent from the base request: made an object
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[path[-1]] = value
    else:
        instance = value
    try:
        _fast_check(schema)(instance)
    except Exception:
        return
    assert not list(_validator(schema).iter_errors(instance)), instance


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
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
        item = {
            "card": card["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2026-11-22T10:00:00Z",
        }
        first = requests.post(url, json={"feedback": [item]}, timeout=30)
        retry = requests.post(url, json={"feedback": [item]}, timeout=30)  # a client retry
        return card["uuid"], (
            first.status_code,
            first.json().get("stored"),
            retry.status_code,
            retry.json().get("stored"),
        )

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

    from cds_service.web.app import create_app

    settings_ = app_settings(
        tmp_path,
        allow_unauthenticated=True,
    )
    client = create_app(settings_).test_client()
    body = copy.deepcopy(captured_sandbox["order_select"])
    body["fhirAuthorization"] = {
        "access_token": "SECRET-ACCESS-TOKEN",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    with caplog.at_level(logging.INFO):
        client.post(SELECT, json=body, headers={"Authorization": "Bearer eyJhbGciOi.SECRET.JWT"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "hookInstance" in text
    assert "SECRET" not in text and "Lumbar" not in text and "Lena" not in text
    assert json.dumps(body["hookInstance"])[1:-1] in text


def test_ids_are_unique_version_4_uuids_and_differ_after_fork():
    import os
    import uuid as uuid_module

    from cds_service.hooks.ids import new_uuid

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


# ------------------------------------------------------------------ nesting, chunked bodies, log lines


def nest(depth: int):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_at(where: str, depth: int) -> tuple[str, str]:
    """(path, raw body) with `depth` levels of arrays at `where`."""
    deep = json.dumps(nest(depth)) if depth < 500 else "[" * depth + "]" * depth
    if where == "feedback":
        return SELECT + "/feedback", json.dumps(
            {
                "feedback": [
                    {
                        "card": "x",
                        "outcome": "accepted",
                        "outcomeTimestamp": "2026-11-22T10:00:00Z",
                        "acceptedSuggestions": [{"id": "DEEP"}],
                    }
                ]
            }
        ).replace('"DEEP"', deep)
    body = copy.deepcopy(BASE_REQUEST)
    if where == "order":
        body["context"]["draftOrders"]["entry"][0]["resource"]["extension"] = "DEEP"
    elif where == "prefetch":
        body["prefetch"]["conditions"]["entry"].append({"resource": {"resourceType": "Condition", "code": "DEEP"}})
    else:
        body["extension"] = "DEEP"
    return SELECT, json.dumps(body).replace('"DEEP"', deep)


@pytest.mark.parametrize("depth", [100, 500, 900, 5000, 100_000])
@pytest.mark.parametrize("where", ["order", "prefetch", "feedback", "extension"])
def test_deeply_nested_json_is_400_never_500(client, where, depth):
    path, raw = nested_at(where, depth)
    reply = client.post(path, data=raw, content_type="application/json")
    if where == "prefetch" and depth < 5000:
        # Only read, never copied: the parser's own recursion limit (near 1,000 levels) guards it.
        assert reply.status_code in (200, 400), reply.get_data(as_text=True)[:300]
    else:
        assert reply.status_code == 400, reply.get_data(as_text=True)[:300]
        assert "deeper than 64 levels" in reply.get_json()["error"]


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory):
    from conftest import running_service

    db = tmp_path_factory.mktemp("small-body") / "f.sqlite3"
    with running_service(
        {"CDS_ALLOW_UNAUTHENTICATED": "1", "CDS_FEEDBACK_DB": str(db), "CDS_MAX_BODY_BYTES": str(64 * 1024)},
        workers=1,
        threads=4,
    ) as server:
        yield server


def chunked(data: bytes):
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


def test_chunked_body_over_the_limit_is_413_not_cut(small_body_server):
    body = copy.deepcopy(BASE_REQUEST)
    body["extension"] = {"padding": "x" * (100 * 1024)}  # valid JSON that a cut would make invalid
    reply = requests.post(
        small_body_server["base"] + SELECT,
        data=chunked(json.dumps(body).encode()),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 413
    assert "CDS_MAX_BODY_BYTES" in reply.json()["error"]
    # Under the limit, the same route takes a chunked body whole.
    small = requests.post(
        small_body_server["base"] + SELECT,
        data=chunked(json.dumps(BASE_REQUEST).encode()),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert small.status_code == 200 and small.json()["cards"]


def test_every_answer_leaves_one_log_line_without_credentials(client, caplog, captured_sandbox):
    import logging

    answers = []
    secret_body = copy.deepcopy(BASE_REQUEST)
    secret_body["fhirAuthorization"] = "SECRET-TOKEN-IN-THE-WRONG-PLACE"  # a 400 whose reason quotes it
    with caplog.at_level(logging.INFO, logger="cds_service.http"):
        answers.append(client.post(SELECT, json=BASE_REQUEST).status_code)
        answers.append(client.post(SELECT, json=secret_body).status_code)
        answers.append(client.post(SELECT + "/feedback", json=captured_sandbox["feedback"]).status_code)  # unknown card
        answers.append(client.post(SELECT + "/feedback", json={"feedback": "no"}).status_code)
        answers.append(client.post(SELECT, data=b"{not json", content_type="application/json").status_code)
        answers.append(client.get("/no/such/path").status_code)
    lines = [json.loads(r.getMessage()) for r in caplog.records if '"event": "answer"' in r.getMessage()]
    assert [line["status"] for line in lines] == answers == [200, 400, 400, 400, 400, 404]
    assert [line["method"] for line in lines] == ["POST"] * 5 + ["GET"]
    assert lines[0]["hookInstance"] == BASE_REQUEST["hookInstance"] and "reason" not in lines[0]
    assert "fhirAuthorization" in lines[1]["reason"] and "[redacted]" in lines[1]["reason"]
    assert lines[2]["path"] == SELECT + "/feedback"
    assert all(line["reason"] for line in lines[3:]) and all(line["duration_ms"] >= 0 for line in lines)
    assert "SECRET" not in "\n".join(r.getMessage() for r in caplog.records)


def test_a_lone_surrogate_in_the_order_and_patient_id_is_answered_not_a_500(client):
    # json reads it, orjson neither reads nor writes it, and the order is copied into the answer
    # the patient id everywhere it appears (context, subjects, the Patient): only the context
    # patient's data is read, and a draft order for another patient is refused
    patient_id = BASE_REQUEST["context"]["patientId"]
    raw = json.dumps(BASE_REQUEST).replace(patient_id, "p\\ud800").replace('"text": "', '"text": "\\ud800', 1).encode()
    assert raw.count(b"\\ud800") >= 3
    reply = client.post(SELECT, data=raw, content_type="application/json")
    assert reply.status_code == 200
    assert json.loads(reply.get_data())["cards"]
