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
    """A duration in words: days under a week, weeks under 6 months, then months, then years
    ("261 weeks" is "5 years" to a reader)."""
    if weeks < 1:
        return plural(round(weeks * 7), "day")
    if weeks < 26:
        return plural(round(weeks), "week")
    if weeks < 104:
        return plural(round(weeks * 7 / 30.44), "month")
    return plural(round(weeks / 52.18), "year")


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
    words = lower_first(item.value or _short(item.display) or item.label)
    if item.status in ("preliminary", "registered"):
        words += f", {item.status}"
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
# Where a long code display can end and still say what it is: before its qualifiers
# ("Age-related osteoporosis | without current pathological fracture", "Unspecified displaced
# fracture of first cervical vertebra | , initial encounter for closed fracture").
_QUALIFIERS = (
    # (not " with": "osteoporosis with current pathological fracture" would lose its fracture)
    re.compile(r",? (without|due to|initial encounter|subsequent encounter|not elsewhere)\b"),
    re.compile(r"[,;(]"),
)


# ICD-10-CM's bookkeeping words, never clinical: "Sprain of ligaments of thoracic spine, initial encounter".
_BOOKKEEPING = re.compile(
    r",? (initial|subsequent) encounter( for [a-z ]+)?$|,? not elsewhere classified|,? NEC\b|, uncomplicated$"
)


def _short(display: str) -> str:
    """The record's words, without a SNOMED CT tag or ICD-10-CM qualifiers, under 60 characters:
    cut before a qualifier, else at a word."""
    text = _BOOKKEEPING.sub("", _SEMANTIC_TAG.sub("", display.strip())).strip()
    if text.startswith("Unspecified ") and len(text) > len("Unspecified ") + 3:
        text = text[len("Unspecified ") :]
        text = text[:1].upper() + text[1:]
    if len(text) <= SHORT_WORDS:
        return text
    for qualifier in _QUALIFIERS:
        cuts = [cut.start() for cut in qualifier.finditer(text) if 12 <= cut.start() <= SHORT_WORDS]
        if cuts:
            return text[: cuts[-1] if qualifier is _QUALIFIERS[1] else cuts[0]].rstrip(" ,;")
    if len(text) <= SHORT_WORDS:
        return text
    return text[: SHORT_WORDS - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def finding_name(item: Evidence) -> str:
    """What the record calls it, short ("Foot drop, right foot"), or the concept's words when the
    record's say nothing ("Other symptoms and signs involving the musculoskeletal system")."""
    if not item.display or (item.display.startswith(("Other ", "Unspecified ")) and len(item.display) > SHORT_WORDS):
        return item.label
    return _short(item.display)


def lower_first(text: str) -> str:
    """ "Unexplained weight loss" -> "unexplained weight loss"; "CRP 45 mg/L" and "HIV" stay."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def sentence(parts: list[str]) -> str:
    """Parts joined as one sentence: "a; b; c." (empty for no parts)."""
    text = "; ".join(part.rstrip(".") for part in parts if part)
    if not text:
        return ""
    return text[:1].upper() + text[1:] + ("" if text.endswith(("?", "!")) else ".")
