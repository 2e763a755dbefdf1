"""Demo and test fixtures: load them with every date moved so 'today' is the fixture's anchor.

Each patient Bundle's `timestamp` is the day its scenario was written for ("2 weeks ago" is
two weeks before it). Shifting all dates by (today - timestamp) keeps a 2-week episode a
2-week episode whenever the demo or the tests run.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fixtures"
ANCHOR = date(2026, 11, 22)
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")


def shift_dates(value, days: int):
    """A copy of a JSON value with every FHIR date/dateTime string moved by `days`."""
    if isinstance(value, dict):
        return {key: shift_dates(item, days) for key, item in value.items()}
    if isinstance(value, list):
        return [shift_dates(item, days) for item in value]
    if isinstance(value, str) and days:
        match = _DATE.match(value)
        if match:
            try:
                moved = date.fromisoformat(match.group(1)) + timedelta(days=days)
            except ValueError:
                return value
            return moved.isoformat() + (match.group(2) or "")
    return value


def days_since_anchor(today: date | None = None) -> int:
    return ((today or datetime.now().date()) - ANCHOR).days


def load_json(path: Path, today: date | None = None):
    with Path(path).open(encoding="utf-8") as handle:
        return shift_dates(json.load(handle), days_since_anchor(today))


def manifest() -> list[dict]:
    with (FIXTURES_DIR / "manifest.json").open(encoding="utf-8") as handle:
        return json.load(handle)


def hook_request(patient_id: str, hook: str = "order-select", today: date | None = None) -> dict:
    return load_json(FIXTURES_DIR / "hooks" / f"{patient_id}.{hook}.json", today)


def patient_bundle(patient_id: str, today: date | None = None) -> dict:
    return load_json(FIXTURES_DIR / "patients" / f"{patient_id}.json", today)
