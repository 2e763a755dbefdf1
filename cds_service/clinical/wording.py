"""Durations, dates and studies in the words a card uses ("3 weeks", "lumbar MRI 4 months ago")."""

from __future__ import annotations

import re
from datetime import date

from .model import Evidence, PriorImaging

MODALITY_WORDS = {"radiograph": "radiographs", "ct": "CT", "mri": "MRI"}
REGION_WORDS = {"lumbar": "low back", "cervical": "neck", "thoracic": "thoracic back"}


def plural(count: int, word: str) -> str:
    """ "1 week", "3 weeks": the card never says "1 weeks"."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def format_weeks(weeks: float) -> str:
    """A duration in weeks in words: days under a week, else whole weeks."""
    if weeks < 1:
        return plural(round(weeks * 7), "day")
    return plural(round(weeks), "week")


def format_ago(when: date, as_of: date) -> str:
    """How long ago, in words: "today", "5 days ago", "3 weeks ago", "4 months ago"."""
    days = max((as_of - when).days, 0)
    if days == 0:
        return "today"
    if days < 7:
        return plural(days, "day") + " ago"
    if days < 8 * 7:
        return plural(round(days / 7), "week") + " ago"
    if days < 2 * 365:
        return plural(round(days / 30.44), "month") + " ago"
    return plural(round(days / 365.25), "year") + " ago"


def study_words(study: PriorImaging, as_of: date) -> str:
    """ "lumbar MRI 3 months ago" """
    region = {"multi": "spine (several regions)", "unspecified": "spine"}.get(study.region, study.region)
    return f"{region} {MODALITY_WORDS.get(study.modality, study.modality)} {format_ago(study.date, as_of)}"


def finding_words(item: Evidence, as_of: date) -> str:
    """A finding as the card's "why" names it: its words, its value, and its date.

    "urinary retention (on the order)", "CRP 45 mg/L (2026-11-20)", "osteoporosis (recorded
    2019-03-02)": a date that is only the day the entry was written says so.
    """
    words = item.value or lower_first(_short(item.display) or item.label)
    if item.reference == "Patient":
        return words  # age: no date to give
    if item.origin == "order":
        return f"{words} (on the order)"
    if item.date is None:
        return f"{words} (undated)"
    if item.dated_by == "recorded":
        return f"{words} (recorded {item.date.isoformat()})"
    return f"{words} ({item.date.isoformat()})"


# SNOMED CT's semantic tags add nothing for a reader: "Low back pain (finding)" -> "Low back pain".
_SEMANTIC_TAG = re.compile(r"\s*\((finding|disorder|situation|procedure|observable entity)\)$")
SHORT_WORDS = 60


def _short(display: str) -> str:
    """The record's words, without a SNOMED CT tag, cut at a word under 60 characters."""
    text = _SEMANTIC_TAG.sub("", display.strip())
    if len(text) <= SHORT_WORDS:
        return text
    return text[: SHORT_WORDS - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def lower_first(text: str) -> str:
    """ "Unexplained weight loss" -> "unexplained weight loss"; "CRP 45 mg/L" and "HIV" stay."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def sentence(parts: list[str]) -> str:
    """Parts joined as one sentence: "a; b; c." (empty for no parts)."""
    text = "; ".join(part.rstrip(".") for part in parts if part)
    if not text:
        return ""
    return text[:1].upper() + text[1:] + ("" if text.endswith(("?", "!")) else ".")
