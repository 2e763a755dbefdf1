"""What the web layer hands the utilization record after a hook call: one row per rated order,
and, on order-sign, the orders signed as another study.

The hook path never imports the store's internals; this module turns a `HookResult` into
`utilization.store.OrderRecord`s and `SignedOrder`s.
"""

from __future__ import annotations

from typing import Any

from ..clinical.codesystems import short_system
from ..clinical.mappings import Mappings
from ..hooks.discovery import SERVICE_HOOKS
from ..hooks.evaluation import HookResult
from ..utilization.store import OrderRecord, SignedOrder, utcnow

MAX_SIGNED_SEEN = 50  # draft orders looked at per order-sign call


def order_records(
    service_id: str, body: dict, result: HookResult, mappings: Mappings, mode: str, http_ms: float | None = None
) -> list[OrderRecord]:
    """The evaluation log's rows for one answered hook call (one OrderRecord per order)."""
    context = body.get("context") or {}
    now = utcnow()
    site = encounter_site(body)
    return [
        OrderRecord(
            card_uuid=e.card_uuid,
            evaluated_at=now,
            service_id=service_id,
            hook=SERVICE_HOOKS[service_id],
            hook_instance=str(body.get("hookInstance")),
            user_id=context.get("userId"),
            patient_id=context.get("patientId"),
            encounter_id=context.get("encounterId"),
            order_reference=e.order_reference,
            order_code=e.order_code,
            region=e.region,
            contrast=e.contrast,
            verdict=e.verdict,
            variant=e.variant,
            rating=e.rating,
            red_flags=e.red_flags,
            unread_sources=e.unread_sources,
            suggestion_kinds=e.suggestion_kinds,
            latency_ms=round(result.timings_ms.get("total", 0.0), 3),
            mappings_version=mappings.version,
            consult_id=e.consult_id,
            mode=mode,
            fingerprint=getattr(e, "fingerprint", "") or "",
            override_reasons=dict(e.override_reasons),
            http_ms=http_ms,
            site=getattr(e, "site", None) or site,
        )
        for e in result.evaluations
    ]


def signed_orders(service_id: str, body: dict, result: HookResult) -> list[SignedOrder]:
    """On order-sign: the draft ServiceRequests that are not rated spine MRIs. One of them may be an
    order that had an MRI card before and was changed to another study: the report counts that
    order as changed. (The store keeps only those it knows; any other order-sign leaves nothing.)"""
    if SERVICE_HOOKS.get(service_id) != "order-sign":
        return []
    context = body.get("context") or {}
    drafts = context.get("draftOrders")
    entries = drafts.get("entry") if isinstance(drafts, dict) else None
    if not isinstance(entries, list):
        return []
    rated = {e.order_reference for e in result.evaluations}
    now = utcnow()
    found = []
    for entry in entries[:MAX_SIGNED_SEEN]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        reference = f"ServiceRequest/{resource.get('id')}"
        if reference in rated or not isinstance(resource.get("id"), str):
            continue
        found.append(
            SignedOrder(
                patient_id=context.get("patientId"),
                encounter_id=context.get("encounterId"),
                order_reference=reference,
                order_code=_first_code(resource.get("code")),
                signed_at=now,
            )
        )
    return found


def _first_code(concept: Any) -> str | None:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            system = coding.get("system")
            return f"{short_system(system) or system or '?'}|{coding['code'].strip()[:64]}"
    text = concept.get("text") if isinstance(concept, dict) else None
    return f"text|{text[:64]}" if isinstance(text, str) else None


def encounter_site(body: dict) -> str | None:
    """The department or site the EHR names for the encounter, when the prefetch carries the
    Encounter: its service provider, else its service type, else its location (display or
    reference). The department mapping file (CDS_DEPARTMENTS_FILE) fills in the rest at report time."""
    context = body.get("context") or {}
    encounter_id = context.get("encounterId")
    prefetch = body.get("prefetch")
    if not isinstance(encounter_id, str) or not isinstance(prefetch, dict):
        return None
    for value in prefetch.values():
        for resource in _encounters(value):
            if resource.get("id") == encounter_id or encounter_id == f"Encounter/{resource.get('id')}":
                return _site_of(resource)
    return None


def _encounters(value: Any) -> list[dict]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Encounter":
        return [value]
    entries = value.get("entry") if value.get("resourceType") == "Bundle" else None
    if not isinstance(entries, list) or not entries:
        return []
    first = entries[0].get("resource") if isinstance(entries[0], dict) else None
    if not isinstance(first, dict) or first.get("resourceType") != "Encounter":
        return []  # a bundle of something else: not walked (prefetch bundles can be large)
    return [
        entry["resource"]
        for entry in entries[:50]
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and entry["resource"].get("resourceType") == "Encounter"
    ]


def _named(reference: Any) -> str | None:
    if not isinstance(reference, dict):
        return None
    for key in ("display", "reference"):
        if isinstance(reference.get(key), str) and reference[key].strip():
            return reference[key].strip()
    return None


def _site_of(encounter: dict) -> str | None:
    provider = _named(encounter.get("serviceProvider"))
    if provider:
        return provider
    service = encounter.get("serviceType")
    services = service if isinstance(service, list) else [service]  # R4: one; R5: a list
    for concept in services:
        concept = concept.get("concept", concept) if isinstance(concept, dict) else None
        if isinstance(concept, dict):
            if isinstance(concept.get("text"), str) and concept["text"].strip():
                return concept["text"].strip()
            for coding in concept.get("coding") or []:
                if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                    return coding["display"]
    for location in encounter.get("location") or []:
        named = _named(location.get("location")) if isinstance(location, dict) else None
        if named:
            return named
    return None
