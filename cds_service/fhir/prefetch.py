"""FHIR data access: turn a hook's prefetch into resources by kind, noting what was not read.

CDS Hooks 2.0 prefetch semantics: a key that is absent was not satisfied; a key whose value
is null means the EHR has no such data; an OperationOutcome (alone or inside a Bundle) means
the EHR failed to fetch it; a Bundle with a `next` link holds only its first page.
A later data source (the EHR's FHIR server) fills in the keys this one leaves unread.

Given the hook's `context.patientId`, only that patient's resources are read (`patient.py`):
the others are left out, counted in `ClinicalData.other_patient` and noted for the card; a key
whose resources were all another patient's stays unread.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..clinical.record import EXPECTED_TYPES, ClinicalData
from .patient import SUBJECT_OPTIONAL, owner

log = logging.getLogger(__name__)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def operation_outcome_text(outcome: dict[str, Any]) -> str:
    texts = []
    for issue in _list(outcome.get("issue")):
        if isinstance(issue, dict):
            details = _dict(issue.get("details"))
            text = issue.get("diagnostics") or details.get("text") or issue.get("code")
            if text:
                texts.append(str(text))
    return "; ".join(texts) or "no detail given"


def read_prefetch_value(key: str, value, data: ClinicalData, patient_id: str | None = None) -> None:
    """Read one prefetch entry into `data` (resources, or the reason it is unread); with
    `patient_id`, only that patient's resources."""
    expected = EXPECTED_TYPES[key]
    if value is None:
        data.resources[key] = []  # the EHR says it has no such data
        return
    if not isinstance(value, dict):
        data.unread[key] = "prefetch value is not a FHIR resource"
        return
    resource_type = value.get("resourceType")
    if resource_type == "OperationOutcome":
        data.unread[key] = f"the EHR could not fetch it ({operation_outcome_text(value)})"
        return
    if resource_type == expected and key == "patient":
        if patient_id is not None and owner(value, patient_id) != "own":
            data.other_patient += 1
            data.unread[key] = "it is another patient's Patient resource (its id is not context.patientId); left out"
            data.notes.append("patient: the Patient resource of another patient was left out")
            return
        data.resources[key] = [value]
        return
    resources: list[dict[str, Any]] = []
    doubtful: list[dict[str, Any]] = []  # not plainly this patient's: judged by _own after the loop
    failed: list[str] = []
    append = resources.append
    # The patient check rides on the same loop: a subject that is exactly Patient/<id> is the
    # usual case and costs one comparison; anything else goes to _own.
    own_reference = f"Patient/{patient_id}" if patient_id is not None else None
    for entry in _list(value.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            data.notes.append(f"{key}: a Bundle entry without a resource was skipped")
            continue
        kind = resource.get("resourceType")
        search = entry.get("search")
        if kind == expected and not (isinstance(search, dict) and search.get("mode") == "include"):
            # the usual entry, decided in as few steps as the rules below allow
            if own_reference is None:
                append(resource)
                continue
            subject = resource.get("subject")
            if type(subject) is dict and subject.get("reference") == own_reference:
                append(resource)
            else:
                doubtful.append(resource)
            continue
        search = search if isinstance(search, dict) else {}
        if kind == "OperationOutcome":
            failed.append(operation_outcome_text(resource))
        elif search.get("mode") == "include" or (kind != expected and kind in ("Medication", "Patient")):
            if resource.get("id"):
                data.included[f"{kind}/{resource['id']}"] = resource
        elif kind == expected:
            (doubtful if own_reference is not None else resources).append(resource)
        else:
            data.notes.append(f"{key}: a {kind} in a Bundle of {expected} was skipped")
    if patient_id is not None and doubtful:
        resources += _own(key, expected, doubtful, patient_id, data)
        if not resources:
            data.unread[key] = (
                f"only another patient's {expected} resources came back (left out): this patient's were not sent"
            )
            return
    has_next = any(isinstance(link, dict) and link.get("relation") == "next" for link in _list(value.get("link")))
    if failed and not resources:
        data.unread[key] = f"the EHR could not fetch it ({'; '.join(failed)})"
        return
    data.resources[key] = resources
    if failed:
        data.notes.append(f"{key}: the EHR reported a partial failure ({'; '.join(failed)})")
    if has_next:
        data.unread[key] = "only the first page was prefetched (the Bundle has a next link)"


def _count(n: int) -> str:
    return f"{n} resource" if n == 1 else f"{n} resources"


def _were(n: int) -> str:
    return "was" if n == 1 else "were"


def _own(key: str, expected: str, resources: list[dict[str, Any]], patient_id: str, data: ClinicalData):
    """The resources of `patient_id`; the others are counted in `data.other_patient` and noted."""
    kept: list[dict[str, Any]] = []
    other = unattributed = 0
    for resource in resources:
        whose = owner(resource, patient_id)
        if whose == "own" or (whose == "none" and expected in SUBJECT_OPTIONAL):
            kept.append(resource)
        elif whose == "none":
            unattributed += 1
        else:
            other += 1
    if other:
        data.notes.append(f"{key}: {_count(other)} of another patient {_were(other)} left out")
    if unattributed:
        data.notes.append(
            f"{key}: {_count(unattributed)} without a subject {_were(unattributed)} left out "
            f"(FHIR requires {expected}.subject)"
        )
    data.other_patient += other + unattributed
    return kept


def log_other_patient(hook_instance: object, source: str, left_out: int) -> None:
    """One log line when resources of another patient were left out: how many, never whose."""
    if left_out:
        line = {"event": "other-patient-resources", "source": source, "left_out": left_out}
        if isinstance(hook_instance, str):
            line["hookInstance"] = hook_instance[:100]
        log.warning(json.dumps(line))


def from_prefetch(prefetch, patient_id: str | None = None, hook_instance: str | None = None) -> ClinicalData:
    """The prefetch read into ClinicalData; with `patient_id` (the hook's context.patientId), only
    that patient's resources (without it, as it came: for offline tools and the rules' tests)."""
    data = ClinicalData()
    prefetch = prefetch if isinstance(prefetch, dict) else {}
    for key in EXPECTED_TYPES:
        if key not in prefetch:
            data.unread[key] = "not in the prefetch"
            continue
        read_prefetch_value(key, prefetch[key], data, patient_id)
    log_other_patient(hook_instance, "prefetch", data.other_patient)
    return data
