"""FHIR data access: turn a hook's prefetch into resources by kind, noting what was not read.

CDS Hooks 2.0 prefetch semantics: a key that is absent was not satisfied; a key whose value
is null means the EHR has no such data; an OperationOutcome (alone or inside a Bundle) means
the EHR failed to fetch it; a Bundle with a `next` link holds only its first page.
A later data source (the EHR's FHIR server) fills in the keys this one leaves unread.
"""

from __future__ import annotations

from typing import Any

from ..clinical.record import EXPECTED_TYPES, ClinicalData


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


def read_prefetch_value(key: str, value, data: ClinicalData) -> None:
    """Read one prefetch entry into `data` (resources, or the reason it is unread)."""
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
        data.resources[key] = [value]
        return
    if resource_type != "Bundle":
        data.unread[key] = f"expected a Bundle of {expected}, got {resource_type or 'no resourceType'}"
        return
    resources: list[dict[str, Any]] = []
    failed: list[str] = []
    append = resources.append
    for entry in _list(value.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            data.notes.append(f"{key}: a Bundle entry without a resource was skipped")
            continue
        kind = resource.get("resourceType")
        search = entry.get("search")
        if kind == expected and not (isinstance(search, dict) and search.get("mode") == "include"):
            append(resource)  # the usual entry, decided in as few steps as the rules below allow
            continue
        search = search if isinstance(search, dict) else {}
        if kind == "OperationOutcome":
            failed.append(operation_outcome_text(resource))
        elif search.get("mode") == "include" or (kind != expected and kind in ("Medication", "Patient")):
            if resource.get("id"):
                data.included[f"{kind}/{resource['id']}"] = resource
        elif kind == expected:
            resources.append(resource)
        else:
            data.notes.append(f"{key}: a {kind} in a Bundle of {expected} was skipped")
    has_next = any(isinstance(link, dict) and link.get("relation") == "next" for link in _list(value.get("link")))
    if failed and not resources:
        data.unread[key] = f"the EHR could not fetch it ({'; '.join(failed)})"
        return
    data.resources[key] = resources
    if failed:
        data.notes.append(f"{key}: the EHR reported a partial failure ({'; '.join(failed)})")
    if has_next:
        data.unread[key] = "only the first page was prefetched (the Bundle has a next link)"


def from_prefetch(prefetch) -> ClinicalData:
    data = ClinicalData()
    prefetch = prefetch if isinstance(prefetch, dict) else {}
    for key in EXPECTED_TYPES:
        if key not in prefetch:
            data.unread[key] = "not in the prefetch"
            continue
        read_prefetch_value(key, prefetch[key], data)
    return data
