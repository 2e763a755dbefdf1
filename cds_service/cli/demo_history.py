"""Synthetic order history for the demo, so the report and the dashboard have something to show.

Every fixture patient is rated once by the real engine; the history then replays those
verdicts and cards over the last few weeks for a handful of made-up ordering clinicians, with
re-fired order-selects and clinicians' feedback. Rows are marked `synthetic`, and the report says
how many it counts, so demo history is never mistaken for real use.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..clinical.mappings import Mappings
from ..hooks.cards import OVERRIDE_REASONS
from ..hooks.evaluation import Evaluation
from ..utilization.store import OrderRecord, Store, evaluations, utcnow

CLINICIANS = [
    f"Practitioner/demo-{name}" for name in ("adams", "baker", "chen", "diaz", "evans", "fischer", "garcia", "hughes")
]
# How often each clinician orders a low-value MRI, relative to the others: the ranking shows it.
LOW_VALUE_HABIT = [0.2, 0.9, 0.4, 1.0, 0.3, 0.6, 0.25, 0.5]
ADVICE_TAKEN_SHARE = 0.55
OVERRIDE_SHARE = 0.3


def _rated_fixtures(mappings: Mappings) -> list[tuple[str, Evaluation]]:
    from ..hooks.evaluation import evaluate_hook
    from ..hooks.request import HookRequestError
    from . import fixtures

    rated = []
    for case in fixtures.manifest():
        body = fixtures.hook_request(case["patient"], "order-select", today=fixtures.ANCHOR)
        try:
            result = evaluate_hook("spine-mri-order-select", body, mappings, as_of=fixtures.ANCHOR)
        except HookRequestError:
            continue
        rated += [(case["patient"], evaluation) for evaluation in result.evaluations]
    return rated


def fill_demo_history(
    store: Store, mappings: Mappings, weeks: int = 6, orders_per_week: int = 70, seed: int = 7
) -> int:
    """Add synthetic orders and feedback over the last `weeks` weeks (once per database); returns orders added."""
    with store.engine.connect() as connection:
        if connection.execute(
            sa.select(sa.func.count()).select_from(evaluations).where(evaluations.c.synthetic.is_(True))
        ).scalar():
            return 0
    chance = random.Random(seed)
    rated = _rated_fixtures(mappings)
    low_value = [item for item in rated if item[1].verdict == "low-value"]
    now = utcnow()
    records: list[OrderRecord] = []
    feedback_items: list[dict[str, Any]] = []
    total = weeks * orders_per_week
    for index in range(total):
        clinician = chance.randrange(len(CLINICIANS))
        pool = low_value if chance.random() < LOW_VALUE_HABIT[clinician] * 0.45 else rated
        patient, evaluation = chance.choice(pool)
        when = now - timedelta(days=chance.uniform(0, weeks * 7))
        base = OrderRecord(
            card_uuid="",
            evaluated_at=when,
            service_id="spine-mri-order-select",
            hook="order-select",
            hook_instance=str(uuid.UUID(int=chance.getrandbits(128))),
            user_id=CLINICIANS[clinician],
            patient_id=f"demo-{patient}-{index}",
            encounter_id=f"demo-encounter-{index}",
            order_reference=evaluation.order_reference,
            order_code=evaluation.order_code,
            region=evaluation.region,
            contrast=evaluation.contrast,
            verdict=evaluation.verdict,
            variant=evaluation.variant,
            rating=evaluation.rating,
            red_flags=evaluation.red_flags,
            unread_sources=evaluation.unread_sources,
            suggestion_kinds={},
            latency_ms=round(chance.lognormvariate(2.2, 0.45), 2),
            mappings_version=mappings.version,
            consult_id="",
            mode="live",
            synthetic=True,
        )
        # order-select often fires more than once for one order; then the clinician signs
        for repeat in range(1 + (chance.random() < 0.3) + (chance.random() < 0.15)):
            card = str(uuid.UUID(int=chance.getrandbits(128)))
            kinds = {str(uuid.UUID(int=chance.getrandbits(128))): kind for kind in evaluation.suggestion_kinds.values()}
            records.append(
                replace(
                    base,
                    card_uuid=card,
                    consult_id=f"urn:uuid:{card}",
                    suggestion_kinds=kinds,
                    evaluated_at=when + timedelta(seconds=20 * repeat),
                )
            )
        last = records[-1]
        if not last.suggestion_kinds or chance.random() > 0.8:
            continue  # no advice to take, or no feedback sent
        stamp = (last.evaluated_at + timedelta(seconds=30)).isoformat() + "Z"
        if chance.random() < ADVICE_TAKEN_SHARE:
            suggestion = next(iter(last.suggestion_kinds))
            feedback_items.append(
                {
                    "card": last.card_uuid,
                    "outcome": "accepted",
                    "outcomeTimestamp": stamp,
                    "acceptedSuggestions": [{"id": suggestion}],
                }
            )
        elif chance.random() < OVERRIDE_SHARE / (1 - ADVICE_TAKEN_SHARE):
            code = chance.choices([c for c, _ in OVERRIDE_REASONS], weights=[5, 3, 4, 2, 2])[0]
            feedback_items.append(
                {
                    "card": last.card_uuid,
                    "outcome": "overridden",
                    "outcomeTimestamp": stamp,
                    "overrideReason": {"reason": {"code": code}},
                }
            )
    store.write_evaluations(records)
    for start in range(0, len(feedback_items), 100):
        store.record_feedback(
            "spine-mri-order-select", {"feedback": feedback_items[start : start + 100]}, dict(OVERRIDE_REASONS)
        )
    return total
