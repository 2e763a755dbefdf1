"""Synthetic order history for the demo, so the report and the dashboard have something to show.

Every fixture patient is rated once by the real engine; the history then replays those verdicts
and cards over the last few weeks for a handful of made-up ordering clinicians in three made-up
departments: first a shadow period (cards recorded, none shown), then live, with re-fired
order-selects, clinicians' feedback (only reasons the card offered), and order-sign for most
orders: signed as ordered, changed to radiographs, or never signed. Rows are marked `synthetic`,
and the report says how many it counts, so demo history is never mistaken for real use.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..clinical.mappings import Mappings
from ..hooks.evaluation import Evaluation
from ..utilization.store import OrderRecord, SignedOrder, Store, evaluations, utcnow

CLINICIANS = [
    f"Practitioner/demo-{name}" for name in ("adams", "baker", "chen", "diaz", "evans", "fischer", "garcia", "hughes")
]
DEPARTMENTS = ["Primary care", "Emergency department", "Orthopaedics", "Primary care"] * 2
# How often each clinician orders a low-value MRI, relative to the others: the ranking shows it.
LOW_VALUE_HABIT = [0.2, 0.9, 0.4, 1.0, 0.3, 0.6, 0.25, 0.5]
# How often each one signs an advised order anyway (live).
SIGN_ANYWAY_HABIT = [0.15, 0.6, 0.3, 0.7, 0.2, 0.4, 0.2, 0.35]
SHADOW_SHARE = 0.35  # the first third of the history: shadow mode (the baseline before go-live)
LIVE_EFFECT = 0.6  # once live, a clinician orders low-value this much as often as in shadow
SIGNED_SHARE = 0.85  # orders without advice that are signed
FEEDBACK_SHARE = 0.8


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


def _new_uuid(chance: random.Random) -> str:
    return str(uuid.UUID(int=chance.getrandbits(128)))


def _card(chance: random.Random, base: OrderRecord, rated: Evaluation, at, hook: str = "order-select") -> OrderRecord:
    card_uuid = _new_uuid(chance)
    latency = round(chance.lognormvariate(2.2, 0.45), 2)
    return replace(
        base,
        card_uuid=card_uuid,
        consult_id=f"urn:uuid:{card_uuid}",
        hook_instance=_new_uuid(chance),
        service_id=f"spine-mri-{hook}",
        hook=hook,
        evaluated_at=at,
        suggestion_kinds={_new_uuid(chance): kind for kind in rated.suggestion_kinds.values()},
        latency_ms=latency,
        http_ms=round(latency + chance.lognormvariate(1.0, 0.5), 2),
    )


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
    span = timedelta(days=weeks * 7)
    go_live = now - span * (1 - SHADOW_SHARE)
    records: list[OrderRecord] = []
    signed: list[SignedOrder] = []
    feedback_items: list[dict[str, Any]] = []
    total = weeks * orders_per_week
    for index in range(total):
        when = now - span * chance.random()
        mode = "shadow" if when < go_live else "live"
        clinician = chance.randrange(len(CLINICIANS))
        habit = LOW_VALUE_HABIT[clinician] * 0.45 * (LIVE_EFFECT if mode == "live" else 1.0)
        pool = low_value if chance.random() < habit else rated
        patient, evaluation = chance.choice(pool)
        base = OrderRecord(
            card_uuid="",
            evaluated_at=when,
            service_id="spine-mri-order-select",
            hook="order-select",
            hook_instance="",
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
            latency_ms=0.0,
            mappings_version=mappings.version,
            consult_id="",
            mode=mode,
            synthetic=True,
            fingerprint=f"{chance.getrandbits(128):032x}",
            override_reasons=dict(evaluation.override_reasons),
            site=DEPARTMENTS[clinician],
        )

        # order-select often fires more than once for one order
        repeats = 1 + (chance.random() < 0.3)
        selects = [_card(chance, base, evaluation, when + timedelta(seconds=20 * r)) for r in range(repeats)]
        records += selects
        last = selects[-1]
        sign_at = last.evaluated_at + timedelta(minutes=chance.uniform(1, 30))
        advised = mode == "live" and evaluation.verdict in ("low-value", "radiographs-first")
        if not advised:
            if sign_at < now and chance.random() < SIGNED_SHARE:
                records.append(_card(chance, base, evaluation, sign_at, "order-sign"))
            continue
        # a live card advised against the MRI: what the clinician did with it
        kinds = {kind: suggestion for suggestion, kind in last.suggestion_kinds.items()}
        stamp = (last.evaluated_at + timedelta(seconds=30)).isoformat() + "Z"
        pending = now - last.evaluated_at < timedelta(hours=24) and chance.random() < 0.5
        roll = chance.random()
        if pending:
            continue  # no order-sign yet
        if roll < SIGN_ANYWAY_HABIT[clinician]:
            if chance.random() < FEEDBACK_SHARE and last.override_reasons:
                code = chance.choice(sorted(last.override_reasons))
                feedback_items.append(
                    {
                        "card": last.card_uuid,
                        "outcome": "overridden",
                        "outcomeTimestamp": stamp,
                        "overrideReason": {"reason": {"code": code}},
                    }
                )
            records.append(_card(chance, base, evaluation, sign_at, "order-sign"))
        elif "switch-to-first-study" in kinds and chance.random() < 0.7:
            feedback_items.append(
                {
                    "card": last.card_uuid,
                    "outcome": "accepted",
                    "outcomeTimestamp": stamp,
                    "acceptedSuggestions": [{"id": kinds["switch-to-first-study"]}],
                }
            )
            signed.append(
                SignedOrder(
                    patient_id=base.patient_id,
                    encounter_id=base.encounter_id,
                    order_reference=base.order_reference,
                    order_code="loinc|36575-0",  # radiographs instead
                    signed_at=sign_at,
                    synthetic=True,
                )
            )
        elif "cancel" in kinds and chance.random() < 0.6:
            feedback_items.append(
                {
                    "card": last.card_uuid,
                    "outcome": "accepted",
                    "outcomeTimestamp": stamp,
                    "acceptedSuggestions": [{"id": kinds["cancel"]}],
                }
            )
        # else: neither feedback nor order-sign (the order was dropped)
    store.write_evaluations(records, signed)
    for start in range(0, len(feedback_items), 100):
        store.record_feedback("spine-mri-order-select", {"feedback": feedback_items[start : start + 100]})
    return total
