"""What the web layer hands the utilization record after a hook call: one row per rated order.

The hook path never imports the store; this module turns a `HookResult` into
`utilization.store.OrderRecord`s.
"""

from __future__ import annotations

from ..clinical.mappings import Mappings
from ..hooks.discovery import SERVICE_HOOKS
from ..hooks.evaluation import HookResult
from ..utilization.store import OrderRecord, utcnow


def order_records(service_id: str, body: dict, result: HookResult, mappings: Mappings, mode: str) -> list:
    """The evaluation log's rows for one answered hook call (one OrderRecord per order)."""
    context = body.get("context") or {}
    now = utcnow()
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
        )
        for e in result.evaluations
    ]
