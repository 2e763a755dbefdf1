"""Another patient's data is never read (issue 18, item 1).

An EHR bug or a shared Bundle can put resources of another patient in the prefetch or in a FHIR
server's answer: another patient's cauda equina must not make this patient's MRI urgent. Only
resources whose subject (or patient) is `context.patientId` are read; the rest are left out,
counted (`ClinicalData.other_patient`), noted for the card, and logged without the other id.
A draft order for another patient is a 400.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
from evidence_pages import evaluate_with_evidence
from test_hostile_fhir import answer, fetcher_for, fhir_answer, hostile, request_reading  # noqa: F401

from cds_service.cli import fixtures
from cds_service.fhir.patient import owner, patient_reference_id
from cds_service.fhir.prefetch import from_prefetch
from cds_service.hooks.discovery import prefetch_templates
from cds_service.hooks.request import HookRequestError, check_request

SELECT = "spine-mri-order-select"
OTHER = "someone-else-7"


def with_subject(bundle: dict, reference: str | None, how_many: int | None = None) -> dict:
    """A copy of `bundle` whose first `how_many` entries (all by default) name `reference` as subject."""
    bundle = copy.deepcopy(bundle)
    for entry in bundle["entry"][:how_many]:
        if reference is None:
            entry["resource"].pop("subject", None)
        else:
            entry["resource"]["subject"] = {"reference": reference}
    return bundle


def cauda_equina_of(reference: str | None) -> dict:
    return with_subject(fixtures.hook_request("lbp-cauda-equina")["prefetch"]["conditions"], reference)


# ------------------------------------------------------------------ whose resource it is


@pytest.mark.parametrize(
    "reference,named",
    [
        ("Patient/p1", "p1"),
        ("https://ehr.example.org/fhir/Patient/p1", "p1"),
        ("Patient/p1/_history/3", "p1"),
        ("https://ehr.example.org/fhir/Patient/p1/_history/3", "p1"),
        ("Group/p1", None),
        ("p1", None),
        ("urn:uuid:0d4b6f0e-8f0a-4c1e-9d8e-6f0c7e1a2b3c", None),
        ("#contained-patient", None),
        ("Patient/", None),
        ("something/Patient/p1", None),
    ],
)
def test_a_patient_reference_names_its_id(reference, named):
    assert patient_reference_id({"reference": reference}) == named


def test_owner_of_a_resource():
    own = {"reference": "Patient/p1"}
    assert owner({"resourceType": "Condition", "subject": own}, "p1") == "own"
    assert owner({"resourceType": "Condition", "subject": {"reference": "Patient/p2"}}, "p1") == "other"
    assert owner({"resourceType": "Condition", "subject": {"identifier": {"value": "p1"}}}, "p1") == "other"
    assert owner({"resourceType": "AllergyIntolerance", "patient": own}, "p1") == "own"
    assert owner({"resourceType": "Condition"}, "p1") == "none"
    assert owner({"resourceType": "Patient", "id": "p1"}, "p1") == "own"
    assert owner({"resourceType": "Patient", "id": "p2"}, "p1") == "other"


# ------------------------------------------------------------------ the prefetch


def test_prefetched_resources_of_another_patient_are_left_out_counted_and_noted():
    prefetch = fixtures.hook_request("lbp-acute-simple")["prefetch"]
    own_conditions = len(prefetch["conditions"]["entry"])
    planted = cauda_equina_of(f"Patient/{OTHER}")
    prefetch["conditions"]["entry"] += planted["entry"]
    data = from_prefetch(prefetch, patient_id="lbp-acute-simple")
    assert len(data.of("conditions")) == own_conditions
    assert data.other_patient == len(planted["entry"])
    assert "conditions" not in data.unread
    assert any(f"{len(planted['entry'])} resources of another patient were left out" in note for note in data.notes)
    assert not any(OTHER in note for note in data.notes)


def test_a_bundle_holding_only_another_patients_resources_is_a_source_unread():
    """Nothing of this patient's among them: their record of that kind was not sent, so "no red
    flags" must not be asserted on it."""
    prefetch = fixtures.hook_request("lbp-acute-simple")["prefetch"]
    prefetch["conditions"] = cauda_equina_of(f"https://ehr.example.org/fhir/Patient/{OTHER}")
    data = from_prefetch(prefetch, patient_id="lbp-acute-simple")
    assert data.of("conditions") == []
    assert "another patient" in data.unread["conditions"]
    assert OTHER not in data.unread["conditions"]


def test_another_patients_patient_resource_is_left_out_and_the_patient_unread():
    prefetch = fixtures.hook_request("lbp-acute-simple")["prefetch"]
    prefetch["patient"] = {**prefetch["patient"], "id": OTHER}
    data = from_prefetch(prefetch, patient_id="lbp-acute-simple")
    assert data.patient is None
    assert data.other_patient == 1
    assert "another patient" in data.unread["patient"]


def test_a_resource_without_a_subject_is_kept_only_where_fhir_makes_it_optional():
    prefetch = fixtures.hook_request("lbp-fever-ivdu")["prefetch"]
    conditions, observations = len(prefetch["conditions"]["entry"]), len(prefetch["observations"]["entry"])
    assert conditions and observations
    prefetch["conditions"] = with_subject(prefetch["conditions"], None, 1)  # Condition.subject is 1..1
    prefetch["observations"] = with_subject(prefetch["observations"], None)  # Observation.subject is 0..1
    data = from_prefetch(prefetch, patient_id="lbp-fever-ivdu")
    assert len(data.of("conditions")) == conditions - 1
    assert len(data.of("observations")) == observations
    assert data.other_patient == 1
    assert any("without a subject" in note for note in data.notes)


def test_absolute_and_versioned_references_to_the_context_patient_are_read():
    prefetch = fixtures.hook_request("lbp-cauda-equina")["prefetch"]
    prefetch["conditions"] = with_subject(
        prefetch["conditions"], "https://ehr.example.org/fhir/Patient/lbp-cauda-equina"
    )
    data = from_prefetch(prefetch, patient_id="lbp-cauda-equina")
    assert len(data.of("conditions")) == len(prefetch["conditions"]["entry"])
    assert data.other_patient == 0 and not data.notes


def test_the_log_line_counts_them_and_never_names_the_other_patient(caplog):
    prefetch = fixtures.hook_request("lbp-acute-simple")["prefetch"]
    prefetch["conditions"]["entry"] += cauda_equina_of(f"Patient/{OTHER}")["entry"]
    with caplog.at_level(logging.INFO):
        from_prefetch(prefetch, patient_id="lbp-acute-simple", hook_instance="hook-1")
    lines = [json.loads(r.getMessage()) for r in caplog.records if "other-patient" in r.getMessage()]
    assert [(line["hookInstance"], line["source"], line["left_out"]) for line in lines] == [("hook-1", "prefetch", 3)]
    assert OTHER not in caplog.text


def test_without_a_patient_id_nothing_is_filtered():
    """The offline helpers (benchmarks, rules tests) read a prefetch as it is."""
    prefetch = fixtures.hook_request("lbp-acute-simple")["prefetch"]
    prefetch["conditions"] = cauda_equina_of(f"Patient/{OTHER}")
    assert len(from_prefetch(prefetch).of("conditions")) == len(prefetch["conditions"]["entry"])


# ------------------------------------------------------------------ the FHIR server's answers


def test_another_patients_resources_from_the_fhir_server_are_left_out(hostile, mappings, caplog):  # noqa: F811
    planted = cauda_equina_of(f"Patient/{OTHER}")
    server = hostile(lambda handler: fhir_answer(handler, planted=planted))
    body = request_reading(server.url)
    data = from_prefetch(body["prefetch"], patient_id=body["context"]["patientId"])
    with caplog.at_level(logging.INFO):
        fetcher_for(server.url).fill(data, body, prefetch_templates(mappings), ["conditions"])
    # Read, the planted cauda equina would make this patient's order "indicated-urgent".
    assert data.of("conditions") == []
    assert data.other_patient == len(planted["entry"])
    assert "another patient" in data.unread["conditions"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if "other-patient" in r.getMessage()]
    assert [(line["source"], line["left_out"]) for line in lines] == [("fhir-server", len(planted["entry"]))]
    assert OTHER not in caplog.text


def test_the_hook_does_not_rate_from_another_patients_fhir_data(hostile, mappings):  # noqa: F811
    planted = cauda_equina_of(f"Patient/{OTHER}")
    server = hostile(lambda handler: fhir_answer(handler, planted=planted))
    result, evidence = evaluate_with_evidence(
        SELECT, request_reading(server.url), mappings, fetcher=fetcher_for(server.url)
    )
    assert result.evaluations[0].verdict != "indicated-urgent"
    assert "another patient" in evidence and OTHER not in evidence


# ------------------------------------------------------------------ draft orders


def test_a_draft_order_for_another_patient_is_400():
    body = fixtures.hook_request("lbp-acute-simple")
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["subject"] = {"reference": f"Patient/{OTHER}"}
    with pytest.raises(HookRequestError) as refused:
        check_request(SELECT, body)
    assert refused.value.status == 400
    message = refused.value.message
    assert "another patient" in message and f"ServiceRequest/{order['id']}" in message
    assert OTHER not in message


def test_a_draft_order_for_another_patient_is_400_over_http(client):
    body = fixtures.hook_request("lbp-cauda-equina", "order-sign")
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"] = {"reference": f"Patient/{OTHER}"}
    reply = client.post("/cds-services/spine-mri-order-sign", json=body)
    assert reply.status_code == 400
    assert "another patient" in reply.get_json()["error"]


def test_draft_orders_for_the_context_patient_or_without_a_subject_pass():
    body = fixtures.hook_request("lbp-acute-simple")
    check_request(SELECT, body)
    body["context"]["draftOrders"]["entry"][0]["resource"].pop("subject")
    check_request(SELECT, body)


def test_the_hook_does_not_rate_from_another_patients_prefetch(mappings):
    body = fixtures.hook_request("lbp-acute-simple")
    body["prefetch"]["conditions"]["entry"] += cauda_equina_of(f"Patient/{OTHER}")["entry"]
    result, evidence = evaluate_with_evidence(SELECT, body, mappings)
    assert result.evaluations[0].verdict == "low-value"  # as without the planted resources
    assert "another patient" in evidence and OTHER not in evidence
