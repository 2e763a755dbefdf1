"""The evidence behind one card, for the page its link opens: everything the five-second card
leaves out (each finding with its code, resource and date, what was not counted and why, this
region's red flags not in the record, the episode's arithmetic, therapy, prior imaging, data not
read or not used, concordant guidance).

This is patient data: `web.evidence` seals it into the link itself (encrypted, signed, expiring)
and renders it; nothing of it is stored.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from ..clinical.mappings import Mappings
from ..clinical.model import FROM_ORDER, Evidence, MriOrder, Verdict
from ..clinical.wording import format_weeks
from .cards import CONTRAST_WORDS, VERDICT_DISPLAY, order_label


def _when(item: Evidence) -> str:
    if item.date is None:
        return "undated"
    return ("recorded " if item.dated_by == "recorded" else "") + item.date.isoformat()


def _finding(item: Evidence) -> dict[str, str]:
    return {
        "label": item.label,
        "what": item.value or item.description,
        "code": item.description,
        "reference": item.reference,
        "from": "the order's reason" if item.origin == FROM_ORDER else "the record",
        "date": _when(item),
        "status": item.status + (f" {item.abated.isoformat()}" if item.abated else ""),
    }


def evidence_page(
    order: MriOrder, verdict: Verdict, card: dict[str, Any], mappings: Mappings, as_of: date
) -> dict[str, Any]:
    """The page's content, as JSON-ready data (lists cut at 40 items: a record has no end)."""
    episode = (
        f"{format_weeks(verdict.episode_weeks)} since the earliest dated symptom"
        if verdict.episode_weeks is not None
        else "duration not recorded"
    )
    return {
        "as_of": as_of.isoformat(),
        "order": f"{order_label(order)} ({order.display}, {order.reference}, priority {order.priority})",
        "summary": card.get("summary", ""),
        "verdict": VERDICT_DISPLAY.get(verdict.code, verdict.code),
        "rating": verdict.pama_rating or "not rated",
        "acr_rating": (verdict.acr_rating or "").replace("-", " "),
        "source": card.get("source", {}),
        "why": verdict.why,
        "now": verdict.now or "",
        "contrast": (CONTRAST_WORDS[verdict.contrast] + f" ({verdict.contrast_reason})") if verdict.contrast else "",
        "confirm": verdict.confirm,
        "found": [_finding(item) for item in verdict.red_flags_found[:40]],
        "not_counted": [{**_finding(item), "why": why} for item, why in verdict.not_counted[:40]],
        "not_in_record": verdict.red_flags_absent,
        "episode": episode,
        "episode_findings": [_finding(item) for item in verdict.episode_evidence[:40]],
        "therapy": (
            f"began {format_weeks(verdict.therapy_weeks)} ago" if verdict.therapy_weeks is not None else "none dated"
        ),
        "therapy_items": verdict.therapy_evidence[:40],
        "prior_imaging": verdict.prior_imaging[:40],
        "missing": verdict.missing,
        "not_documented": verdict.not_documented,
        "skipped": verdict.skipped[:40],
        "concordant": list(verdict.guideline_ids),  # by id: the page resolves them (a shorter link)
    }
