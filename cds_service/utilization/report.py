"""What a radiology utilization team asks of the evaluation log: the numbers behind
`cds-service report` (text, CSV, JSON, HTML: `render.py`, `charts.py`) and `GET /dashboard`.

Everything is per order, not per hook call: an order re-fired by order-select five times and then
signed is one order (`schema.orders`). Times are UTC. Definitions (docs/utilization.md):

- **Verdict** of an order: its latest card's; **as ordered**: its first card's (what the
  clinician asked for, before any advice). Clinicians are compared on the rate as ordered.
- **Advice**: a live-mode card that said low-value or another study first. Shadow-mode cards
  were never shown: shadow orders are counted, never as advice, taken, overridden or outcomes.
- **Outcome** of an advised order, from the first such card on: *changed* (order-sign named the
  order as another study or contrast, or a suggestion that changes the order was accepted),
  *cancelled* (cancel accepted, or no order-sign within `unsigned_after_hours`), *signed*
  (order-sign for the same study and contrast: signed despite the advice), or *pending* (no
  order-sign yet, within the wait). What order-sign shows wins over what feedback says.
- **Signed orders** (the go-live comparison): orders with an order-sign card, by that card's mode.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .schema import evaluations, feedback, orders

NOT_INDICATED = ("low-value", "radiographs-first")
VERDICT_ORDER = ("indicated-urgent", "indicated-routine", "radiographs-first", "low-value", "insufficient-information")
VERDICT_LABELS = {
    "indicated-urgent": "Indicated, urgent",
    "indicated-routine": "Indicated",
    "radiographs-first": "Another study first",
    "low-value": "Low-value",
    "insufficient-information": "Not enough information",
}
REGION_ORDER = ("lumbar", "cervical", "thoracic", "multi", "unspecified")
MODES = ("live", "shadow")
# Suggestion kinds (hooks.cards) whose acceptance changes or removes the order; other kinds
# (make-urgent, keep-routine, next-step, and any new one) say nothing about the outcome.
CHANGING_KINDS = ("switch-to-first-study", "drop-contrast", "add-contrast")
CANCEL_KIND = "cancel"
OUTCOMES = ("changed", "cancelled", "signed", "pending")
OUTCOME_LABELS = {
    "changed": "Changed",
    "cancelled": "Cancelled",
    "signed": "Signed despite the advice",
    "pending": "Not signed yet",
}
Z95, Z998 = 1.959964, 3.090232  # two-sided 95% and 99.8% normal quantiles (funnel limits)
NO_SITE = "(no site named)"
NO_USER = "(no userId)"


def verdict_order(seen) -> list[str]:
    """Known verdicts in their order, then any new ones (sorted): the report never drops a verdict."""
    return [v for v in VERDICT_ORDER if v in seen] + sorted(v for v in seen if v not in VERDICT_ORDER)


def verdict_label(verdict: str) -> str:
    return VERDICT_LABELS.get(verdict, verdict)


@dataclass(frozen=True)
class Window:
    since: date
    until: date  # inclusive

    @property
    def start(self) -> datetime:
        return datetime.combine(self.since, datetime.min.time())

    @property
    def end(self) -> datetime:
        return datetime.combine(self.until + timedelta(days=1), datetime.min.time())

    @classmethod
    def last_days(cls, days: int, today: date | None = None) -> Window:
        today = today or datetime.utcnow().date()
        return cls(today - timedelta(days=days - 1), today)


@dataclass(frozen=True)
class Filters:
    """Which orders the report counts (None: all). `mode` is live or shadow."""

    region: str | None = None
    clinician: str | None = None
    site: str | None = None
    mode: str | None = None

    def describe(self) -> str:
        parts = [f"{name} {value}" for name, value in vars(self).items() if value]
        return ", ".join(parts)


@dataclass(frozen=True)
class Options:
    top: int = 10  # clinicians listed in the text report
    min_orders: int = 10  # fewer orders than this: no rate is shown (clinician, site, month)
    unsigned_after_hours: float = 24.0  # advised and not signed within this: cancelled
    departments: dict[str, str] = field(default_factory=dict)  # userId -> department (CDS_DEPARTMENTS_FILE)
    now: datetime | None = None  # UTC; default: now


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = share * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _monday(moment: datetime) -> str:
    return (moment.date() - timedelta(days=moment.weekday())).isoformat()


def _json_value(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


# ----------------------------------------------------------------------------- one row per order


def _load(engine: sa.Engine, window: Window) -> tuple[Any, Any, Any]:
    """The orders whose latest card is in the window, all their cards, and the feedback on them."""
    in_window = sa.and_(orders.c.latest_at >= window.start, orders.c.latest_at < window.end)
    with engine.connect() as connection:
        order_rows = connection.execute(
            sa.select(
                orders.c.order_key,
                orders.c.evaluations,
                orders.c.signed_other_at,
                orders.c.signed_other_code,
            ).where(in_window)
        ).all()
        card_rows = connection.execute(
            sa.select(
                evaluations.c.card_uuid,
                evaluations.c.order_key,
                evaluations.c.evaluated_at,
                evaluations.c.hook,
                evaluations.c.hook_instance,
                evaluations.c.user_id,
                evaluations.c.order_code,
                evaluations.c.region,
                evaluations.c.contrast,
                evaluations.c.verdict,
                evaluations.c.rating,
                evaluations.c.mode,
                evaluations.c.synthetic,
                evaluations.c.suggestion_kinds,
                evaluations.c.unread_sources,
                evaluations.c.latency_ms,
                evaluations.c.http_ms,
                evaluations.c.site,
            )
            .join(orders, orders.c.order_key == evaluations.c.order_key)
            .where(in_window)
            .order_by(evaluations.c.evaluated_at, evaluations.c.card_uuid)
        ).all()
        feedback_rows = connection.execute(
            sa.select(
                evaluations.c.order_key,
                feedback.c.card_uuid,
                feedback.c.outcome,
                feedback.c.accepted_kinds,
                feedback.c.override_code,
                feedback.c.override_display,
                feedback.c.received_at,
            )
            .join(evaluations, evaluations.c.card_uuid == feedback.c.card_uuid)
            .join(orders, orders.c.order_key == evaluations.c.order_key)
            .where(in_window)
            .order_by(feedback.c.received_at, feedback.c.id)
        ).all()
    return order_rows, card_rows, feedback_rows


def _outcome(cards: list, answers: list, other_at: datetime | None, other_code: str | None, wait, now):
    """(advice card, outcome, detail) of one order; (None, "", "") when it had no advice."""
    advice = next((c for c in cards if c.mode == "live" and c.verdict in NOT_INDICATED), None)
    if advice is None:
        return None, "", ""
    after = advice.evaluated_at
    answers_after = [a for a in answers if a["at_card"] >= after]
    signs = [("mri", c.evaluated_at, c) for c in cards if c.hook == "order-sign" and c.evaluated_at >= after]
    if other_at is not None and other_at >= after:
        signs.append(("other", other_at, None))
    if signs:
        kind, _at, card = max(signs, key=lambda s: s[1])
        if kind == "other":
            return advice, "changed", f"signed as another study ({other_code or 'code not given'})"
        acted = [a for a in answers_after if a["card"] == card.card_uuid and a["outcome"] == "accepted"]
        kinds = {k for a in acted for k in a["kinds"]}
        if CANCEL_KIND in kinds:
            return advice, "cancelled", "cancel accepted at order-sign"
        if kinds & set(CHANGING_KINDS):
            return advice, "changed", f"{sorted(kinds & set(CHANGING_KINDS))[0]} accepted at order-sign"
        if (card.order_code, card.contrast) != (advice.order_code, advice.contrast):
            return advice, "changed", f"signed as {card.order_code or card.contrast}"
        return advice, "signed", "signed as ordered"
    kinds = {k for a in answers_after if a["outcome"] == "accepted" for k in a["kinds"]}
    if CANCEL_KIND in kinds:
        return advice, "cancelled", "cancel accepted"
    if kinds & set(CHANGING_KINDS):
        return advice, "changed", f"{sorted(kinds & set(CHANGING_KINDS))[0]} accepted"
    if now - after > wait:
        return advice, "cancelled", f"not signed within {wait.total_seconds() / 3600:g} h"
    return advice, "pending", "no order-sign yet"


def order_table(engine: sa.Engine, window: Window, options: Options | None = None) -> list[dict]:
    """One dict per order whose latest card is in the window (unfiltered), oldest first; keys
    starting with "_" are for the report's own counting."""
    options = options or Options()
    now = options.now or datetime.utcnow()
    wait = timedelta(hours=options.unsigned_after_hours)
    order_rows, card_rows, feedback_rows = _load(engine, window)
    cards_of: dict[str, list] = defaultdict(list)
    for card in card_rows:
        cards_of[card.order_key].append(card)
    card_time = {card.card_uuid: card.evaluated_at for card in card_rows}
    answers_of: dict[str, list[dict]] = defaultdict(list)
    for row in feedback_rows:
        answers_of[row.order_key].append(
            {
                "card": row.card_uuid,
                "at_card": card_time.get(row.card_uuid, row.received_at),
                "outcome": row.outcome,
                "kinds": _json_value(row.accepted_kinds, []),
                "code": row.override_code,
                "display": row.override_display,
            }
        )
    table = []
    for order in order_rows:
        cards = cards_of.get(order.order_key)
        if not cards:
            continue
        first, latest = cards[0], cards[-1]
        answers = answers_of.get(order.order_key, [])
        live = [c for c in cards if c.mode == "live"]
        user = next((c.user_id for c in cards if c.user_id), None) or NO_USER
        site = latest.site or next((c.site for c in cards if c.site), None) or options.departments.get(user) or NO_SITE
        advice, outcome, detail = _outcome(cards, answers, order.signed_other_at, order.signed_other_code, wait, now)
        # the clinician's answer to the advice shown (live cards only): accepted on any card, else the latest override
        live_cards = {c.card_uuid for c in live}
        shown_answers = [a for a in answers if a["card"] in live_cards]
        accepted = [a for a in shown_answers if a["outcome"] == "accepted"]
        overridden = [a for a in shown_answers if a["outcome"] == "overridden"]
        answer = accepted[-1] if accepted else (overridden[-1] if overridden else None)
        override = answer if answer is not None and answer["outcome"] == "overridden" else None
        sign_times = [c.evaluated_at for c in cards if c.hook == "order-sign"]
        if order.signed_other_at is not None:
            sign_times.append(order.signed_other_at)
        signing = next((c for c in reversed(cards) if c.hook == "order-sign"), None)
        table.append(
            {
                "order": order.order_key[:12],
                "first_card_at": first.evaluated_at,
                "last_card_at": latest.evaluated_at,
                "signed_at": max(sign_times) if sign_times else None,
                "mode": latest.mode,
                "region": latest.region or "unspecified",
                "study": first.order_code or "",
                "contrast": first.contrast or "",
                "verdict_as_ordered": first.verdict,
                "verdict": latest.verdict,
                "rating": latest.rating or "",
                "card_shown": bool(live),
                "advice": advice is not None,
                "outcome": outcome,
                "outcome_detail": detail,
                "feedback": answer["outcome"] if answer else "",
                "accepted": ", ".join(k for a in accepted for k in a["kinds"]),
                "override_reason": (override or {}).get("code") or "",
                "override_display": (override or {}).get("display") or "",
                "clinician": user,
                "site": site,
                "hook_calls": order.evaluations,
                "synthetic": bool(latest.synthetic),
                "_advice_at": advice.evaluated_at if advice is not None else None,
                "_advice_verdict": advice.verdict if advice is not None else None,
                "_has_suggestions": any(_json_value(c.suggestion_kinds, {}) for c in live),
                "_answer": answer,
                "_signing": signing,
                "_unread": _json_value(latest.unread_sources, []),
                "_cards": cards,
            }
        )
    table.sort(key=lambda row: (row["first_card_at"], row["order"]))
    return table


def apply_filters(table: list[dict], filters: Filters | None, ignore_mode: bool = False) -> list[dict]:
    if filters is None:
        return table
    return [
        row
        for row in table
        if (not filters.region or row["region"] == filters.region)
        and (not filters.clinician or row["clinician"] == filters.clinician)
        and (not filters.site or row["site"] == filters.site)
        and (ignore_mode or not filters.mode or row["mode"] == filters.mode)
    ]


# ----------------------------------------------------------------------------- the numbers


def _funnel_flag(rate: float, n: int, group: float) -> str:
    spread = math.sqrt(group * (1 - group) / n) if n else 0.0
    if rate > group + Z998 * spread:
        return "above 99.8% limit"
    if rate > group + Z95 * spread:
        return "above 95% limit"
    if rate < group - Z998 * spread:
        return "below 99.8% limit"
    if rate < group - Z95 * spread:
        return "below 95% limit"
    return "within limits"


def funnel_limits(group: float, n: int) -> dict[str, float]:
    spread = math.sqrt(group * (1 - group) / n) if n else 0.0
    return {
        "lower_998": max(0.0, group - Z998 * spread),
        "lower_95": max(0.0, group - Z95 * spread),
        "upper_95": min(1.0, group + Z95 * spread),
        "upper_998": min(1.0, group + Z998 * spread),
    }


def _outcome_counts(rows: list[dict]) -> dict[str, Any]:
    counts = Counter(row["outcome"] for row in rows if row["outcome"])
    decided = counts["changed"] + counts["cancelled"] + counts["signed"]
    return {
        "advised": sum(counts.values()),
        **{name: counts[name] for name in OUTCOMES},
        "signed_rate": _rate(counts["signed"], decided),
    }


def _period(rows: list) -> dict[str, Any]:
    """Signed orders of one mode: when, how many, how many low-value or not indicated."""
    if not rows:
        return dict.fromkeys(("since", "until", "low_value_rate", "not_indicated_rate")) | {
            "signed_orders": 0,
            "low_value": 0,
            "not_indicated": 0,
        }
    times = [card.evaluated_at for card in rows]
    low = sum(1 for card in rows if card.verdict == "low-value")
    not_indicated = sum(1 for card in rows if card.verdict in NOT_INDICATED)
    return {
        "since": min(times).date().isoformat(),
        "until": max(times).date().isoformat(),
        "signed_orders": len(rows),
        "low_value": low,
        "low_value_rate": _rate(low, len(rows)),
        "not_indicated": not_indicated,
        "not_indicated_rate": _rate(not_indicated, len(rows)),
    }


def _go_live(rows: list[dict]) -> dict[str, Any]:
    signed = [row["_signing"] for row in rows if row["_signing"] is not None]
    shadow = _period([card for card in signed if card.mode == "shadow"])
    live = _period([card for card in signed if card.mode == "live"])
    result: dict[str, Any] = {"shadow": shadow, "live": live, "difference": None, "difference_95ci": None}
    if shadow["signed_orders"] and live["signed_orders"]:
        p1, n1 = shadow["low_value_rate"], shadow["signed_orders"]
        p2, n2 = live["low_value_rate"], live["signed_orders"]
        spread = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        result["difference"] = round(p2 - p1, 4)
        result["difference_95ci"] = [round(p2 - p1 - Z95 * spread, 4), round(p2 - p1 + Z95 * spread, 4)]
    return result


def build_report(
    engine: sa.Engine,
    window: Window,
    top: int = 10,
    filters: Filters | None = None,
    options: Options | None = None,
    table: list[dict] | None = None,
) -> dict:
    options = options or Options(top=top)
    everything = table if table is not None else order_table(engine, window, options)
    rows = apply_filters(everything, filters)
    live = [row for row in rows if row["mode"] == "live"]
    total = len(rows)
    now = options.now or datetime.utcnow()

    verdicts: Counter[str] = Counter(row["verdict"] for row in rows)
    as_ordered: Counter[str] = Counter(row["verdict_as_ordered"] for row in rows)
    by_region: dict[str, Counter[str]] = defaultdict(Counter)
    by_mode: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        by_region[row["region"]][row["verdict"]] += 1
        by_mode[row["mode"]][row["verdict"]] += 1
    order = verdict_order(verdicts)

    # advice shown (live only)
    advised = [row for row in live if row["_has_suggestions"]]
    advised_ids = {id(row) for row in advised}
    accepted_kinds: Counter[str] = Counter()
    override_reasons: Counter[str] = Counter()
    override_displays: dict[str, str] = {}
    taken = overridden = 0
    for row in advised:
        answer = row["_answer"]
        if answer is None:
            continue
        if answer["outcome"] == "accepted":
            taken += 1
            accepted_kinds.update(answer["kinds"])
        else:
            overridden += 1
            code = answer["code"] or "(none given)"
            override_reasons[code] += 1
            override_displays.setdefault(code, answer["display"] or "")

    # outcomes of advised orders (live), overall, by verdict, per clinician, per week
    with_outcome = [row for row in rows if row["outcome"]]
    outcome_by_verdict = {
        verdict: _outcome_counts([row for row in with_outcome if row["_advice_verdict"] == verdict])
        for verdict in NOT_INDICATED
        if any(row["_advice_verdict"] == verdict for row in with_outcome)
    }

    # clinicians: the rate as ordered, with funnel limits around the group's rate
    per_user: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        per_user[row["clinician"]].append(row)
    group_low = sum(1 for row in rows if row["verdict_as_ordered"] == "low-value")
    group_rate = group_low / total if total else 0.0
    clinicians = []
    for user, mine in per_user.items():
        low = sum(1 for row in mine if row["verdict_as_ordered"] == "low-value")
        outcomes = _outcome_counts(mine)
        shown = len(mine) >= options.min_orders
        entry: dict[str, Any] = {
            "user": user,
            "orders": len(mine),
            "low_value": low,
            "low_value_rate": _rate(low, len(mine)) if shown else None,
            "funnel": _funnel_flag(low / len(mine), len(mine), group_rate) if shown and total else "too few orders",
            "advised": outcomes["advised"],
            "signed_anyway": outcomes["signed"],
            "signed_rate": outcomes["signed_rate"] if outcomes["advised"] >= options.min_orders else None,
        }
        clinicians.append(entry)
    # the highest rate first; those with too few orders for a rate after, by volume
    clinicians.sort(key=lambda c: (c["low_value_rate"] is None, -(c["low_value_rate"] or 0), -c["orders"], c["user"]))

    months: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        cell = months[(row["clinician"], row["first_card_at"].strftime("%Y-%m"))]
        cell[0] += 1
        cell[1] += row["verdict_as_ordered"] == "low-value"
    month_names = sorted({month for _, month in months})
    clinician_months = [
        {
            "user": entry["user"],
            "months": {
                month: {
                    "orders": months[(entry["user"], month)][0],
                    "low_value": months[(entry["user"], month)][1],
                    "low_value_rate": _rate(*reversed(months[(entry["user"], month)]))
                    if months[(entry["user"], month)][0] >= options.min_orders
                    else None,
                }
                for month in month_names
                if (entry["user"], month) in months
            },
        }
        for entry in clinicians
    ]

    per_site: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        per_site[row["site"]].append(row)
    sites = []
    for site, mine in sorted(per_site.items(), key=lambda item: (-len(item[1]), item[0])):
        low = sum(1 for row in mine if row["verdict_as_ordered"] == "low-value")
        outcomes = _outcome_counts(mine)
        sites.append(
            {
                "site": site,
                "orders": len(mine),
                "low_value": low,
                "low_value_rate": _rate(low, len(mine)) if len(mine) >= options.min_orders else None,
                "advised": outcomes["advised"],
                "signed_anyway": outcomes["signed"],
                "signed_rate": outcomes["signed_rate"] if outcomes["advised"] >= options.min_orders else None,
            }
        )

    weekly: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        week = weekly[_monday(row["first_card_at"])]
        week["orders"] += 1
        week[row["mode"]] += 1
        week["low_value"] += row["verdict_as_ordered"] == "low-value"
        if id(row) in advised_ids and row["_answer"] is not None:
            week["taken" if row["_answer"]["outcome"] == "accepted" else "overridden"] += 1
    for row in with_outcome:
        week = weekly[_monday(row["_advice_at"])]
        week["advised"] += 1
        week[row["outcome"]] += 1

    # latency per hook call (a call that rated several orders has one card each but one latency)
    calls: dict[str, list[float | None]] = {}
    for row in rows:
        for card in row["_cards"]:
            if window.start <= card.evaluated_at < window.end:
                seen = calls.setdefault(card.hook_instance, [None, None])
                if card.latency_ms is not None:
                    seen[0] = max(seen[0] or 0.0, card.latency_ms)
                if card.http_ms is not None:
                    seen[1] = max(seen[1] or 0.0, card.http_ms)
    evaluation_ms = [v[0] for v in calls.values() if v[0] is not None]
    http_ms = [v[1] for v in calls.values() if v[1] is not None]

    unread_by_source: Counter[str] = Counter()
    unread_orders = 0
    for row in rows:
        if row["_unread"]:
            unread_orders += 1
            unread_by_source.update(row["_unread"])

    choices = {
        "regions": [r for r in REGION_ORDER if any(row["region"] == r for row in everything)]
        + sorted({row["region"] for row in everything} - set(REGION_ORDER)),
        "clinicians": sorted({row["clinician"] for row in everything}),
        "sites": sorted({row["site"] for row in everything}),
        "modes": [m for m in MODES if any(row["mode"] == m for row in everything)],
    }
    sign_calls = sum(1 for row in rows for card in row["_cards"] if card.hook == "order-sign")
    return {
        "window": {"since": window.since.isoformat(), "until": window.until.isoformat(), "time_zone": "UTC"},
        "generated_at": now.replace(microsecond=0).isoformat() + "Z",
        "filters": {k: v for k, v in vars(filters or Filters()).items() if v},
        "choices": choices,
        "orders": total,
        "orders_by_mode": {mode: sum(1 for row in rows if row["mode"] == mode) for mode in MODES},
        "hook_calls": len(calls),
        "order_sign_calls": sign_calls,
        "synthetic_orders": sum(1 for row in rows if row["synthetic"]),
        "shadow_orders": sum(1 for row in rows if row["mode"] == "shadow"),
        "verdicts": {v: verdicts[v] for v in order if verdicts[v]},
        "verdicts_as_ordered": {v: as_ordered[v] for v in verdict_order(as_ordered)},
        "verdicts_by_region": {
            region: {v: by_region[region][v] for v in verdict_order(by_region[region])}
            for region in [*REGION_ORDER, *sorted(set(by_region) - set(REGION_ORDER))]
            if region in by_region
        },
        "verdicts_by_mode": {
            mode: {v: by_mode[mode][v] for v in verdict_order(by_mode[mode])} for mode in MODES if mode in by_mode
        },
        "low_value_rate": _rate(verdicts["low-value"], total),
        "low_value_rate_as_ordered": _rate(as_ordered["low-value"], total),
        "not_indicated_rate": _rate(sum(verdicts[v] for v in NOT_INDICATED), total),
        "low_value_rate_by_mode": {
            mode: _rate(by_mode[mode]["low-value"], sum(by_mode[mode].values())) for mode in MODES if mode in by_mode
        },
        "advice": {
            "orders_with_advice": len(advised),
            "taken": taken,
            "overridden": overridden,
            "no_feedback": len(advised) - taken - overridden,
            "taken_rate": _rate(taken, taken + overridden),
            "accepted_by_kind": dict(accepted_kinds.most_common()),
            "override_reasons": [
                {"code": code, "display": override_displays.get(code, ""), "orders": n}
                for code, n in override_reasons.most_common()
            ],
        },
        "outcomes": {
            **_outcome_counts(with_outcome),
            "low_value": _outcome_counts([row for row in with_outcome if row["_advice_verdict"] == "low-value"]),
            "by_verdict": outcome_by_verdict,
            "unsigned_after_hours": options.unsigned_after_hours,
            "details": dict(Counter(row["outcome_detail"] for row in with_outcome).most_common()),
        },
        "go_live": _go_live(apply_filters(everything, Filters(**{**vars(filters or Filters()), "mode": None}))),
        "min_orders": options.min_orders,
        "top": options.top,
        "group_low_value_rate": round(group_rate, 4) if total else None,
        "clinicians": clinicians,
        "clinician_months": clinician_months,
        "months": month_names,
        "sites": sites,
        "weekly": [
            {
                "week": week,
                "orders": c["orders"],
                "live": c["live"],
                "shadow": c["shadow"],
                "low_value": c["low_value"],
                "low_value_rate": _rate(c["low_value"], c["orders"]),
                "advised": c["advised"],
                "changed": c["changed"],
                "cancelled": c["cancelled"],
                "signed": c["signed"],
                "pending": c["pending"],
                "signed_rate": _rate(c["signed"], c["changed"] + c["cancelled"] + c["signed"]),
                "taken": c["taken"],
                "overridden": c["overridden"],
            }
            for week, c in sorted(weekly.items())
        ],
        "latency_ms": {
            "hook_calls": len(evaluation_ms),
            "p50": _percentile(evaluation_ms, 0.5),
            "p99": _percentile(evaluation_ms, 0.99),
            "http_calls": len(http_ms),
            "http_p50": _percentile(http_ms, 0.5),
            "http_p99": _percentile(http_ms, 0.99),
        },
        "completeness": {
            "orders_with_unread_sources": unread_orders,
            "share": _rate(unread_orders, total),
            "unread_by_source": dict(unread_by_source.most_common()),
        },
    }


def load_departments(path: Path | None) -> dict[str, str]:
    """CDS_DEPARTMENTS_FILE: userId -> department, as a JSON object or a CSV file whose first two
    columns are the userId and the department (a header row naming `userId` or `practitioner` is
    skipped). ValueError says what is wrong."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the departments file {path}: {error}") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except ValueError as error:
            raise ValueError(f"the departments file {path} is not JSON ({error})") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValueError(f"the departments file {path} must be a JSON object of userId to department name")
        return mapping
    mapping = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not row[0].strip():
            continue
        if number == 1 and row[0].strip().lower() in ("userid", "user_id", "practitioner", "clinician"):
            continue
        if len(row) < 2 or not row[1].strip():
            raise ValueError(f"the departments file {path}, line {number}: expected userId,department")
        mapping[row[0].strip()] = row[1].strip()
    return mapping
