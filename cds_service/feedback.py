"""Durable storage for CDS Hooks feedback and for what each hook call decided (SQLite).

SQLite in WAL mode with a busy timeout lets several server processes write at once; each
feedback item has a natural key so a client's retry is stored once, not twice.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    card_uuid TEXT PRIMARY KEY,
    consult_id TEXT NOT NULL,
    service_id TEXT NOT NULL,
    hook_instance TEXT NOT NULL,
    patient_id TEXT,
    order_reference TEXT NOT NULL,
    region TEXT, contrast TEXT,
    verdict TEXT NOT NULL, variant TEXT, rating TEXT,
    evaluated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_tokens (
    iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (iss, jti)
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    override_code TEXT, override_display TEXT, user_comment TEXT,
    accepted_suggestions TEXT NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    raw TEXT NOT NULL,
    UNIQUE (service_id, card_uuid, outcome, outcome_timestamp, accepted_suggestions)
);
"""


class FeedbackError(ValueError):
    pass


class Store:
    """One SQLite connection per thread, kept open: opening one per request costs more than the write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with closing(self._open()) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open()
        return connection

    def record_evaluations(self, service_id: str, hook_instance: str, patient_id: str | None, evaluations) -> None:
        if not evaluations:
            return
        now = datetime.now(timezone.utc).isoformat()
        rows = [(e.card_uuid, e.consult_id, service_id, hook_instance, patient_id, e.order_reference,
                 e.region, e.contrast, e.verdict, e.variant, e.rating, now) for e in evaluations]
        connection = self._connect()
        # The evaluation log survives a process crash (WAL); an OS crash may lose its last
        # rows, which costs an analyst a count, not a clinician anything. Feedback is FULL.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executemany("INSERT OR IGNORE INTO evaluations VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def record_feedback(self, service_id: str, body) -> int:
        """Store every item of a feedback POST; returns how many were new."""
        items = body.get("feedback") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise FeedbackError("'feedback' must be a non-empty array")
        rows = []
        now = datetime.now(timezone.utc).isoformat()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise FeedbackError(f"feedback[{index}] must be an object")
            if not isinstance(item.get("card"), str):
                raise FeedbackError(f"feedback[{index}].card is required (the card's uuid)")
            if item.get("outcome") not in ("accepted", "overridden"):
                raise FeedbackError(f"feedback[{index}].outcome must be 'accepted' or 'overridden'")
            if not isinstance(item.get("outcomeTimestamp"), str):
                raise FeedbackError(f"feedback[{index}].outcomeTimestamp is required")
            accepted = item.get("acceptedSuggestions") or []
            if not isinstance(accepted, list):
                raise FeedbackError(f"feedback[{index}].acceptedSuggestions must be an array")
            override = item.get("overrideReason") if isinstance(item.get("overrideReason"), dict) else {}
            reason = override.get("reason") if isinstance(override.get("reason"), dict) else {}
            rows.append((service_id, item["card"], item["outcome"], reason.get("code"), reason.get("display"),
                         override.get("userComment"), json.dumps(accepted, sort_keys=True),
                         item["outcomeTimestamp"], now, json.dumps(item, sort_keys=True)))
        connection = self._connect()
        connection.execute("PRAGMA synchronous=FULL")
        before = connection.total_changes
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR IGNORE INTO feedback (service_id, card_uuid, outcome, override_code, override_display, "
                "user_comment, accepted_suggestions, outcome_timestamp, received_at, raw) VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return connection.total_changes - before

    def first_use_of_token(self, iss: str, jti: str, expires_at: float) -> bool:
        """True the first time a (iss, jti) is seen; shared by every server process (replay guard)."""
        import time

        connection = self._connect()
        connection.execute("PRAGMA synchronous=NORMAL")
        now = time.time()
        connection.execute("DELETE FROM seen_tokens WHERE expires_at < ?", (now - 60,))
        cursor = connection.execute("INSERT OR IGNORE INTO seen_tokens VALUES (?,?,?)", (iss, jti, expires_at))
        return cursor.rowcount == 1

    def report(self) -> dict:
        """Counts an analyst asks for first: verdicts, ratings, and what clinicians did with the cards."""
        with closing(self._open()) as connection:
            verdicts = connection.execute(
                "SELECT region, verdict, COUNT(*) FROM evaluations GROUP BY region, verdict ORDER BY region, verdict"
            ).fetchall()
            outcomes = connection.execute(
                "SELECT COALESCE(e.verdict, 'unknown card'), f.outcome, COUNT(*) FROM feedback f "
                "LEFT JOIN evaluations e ON e.card_uuid = f.card_uuid GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            overrides = connection.execute(
                "SELECT COALESCE(override_code, '(none given)'), COUNT(*) FROM feedback WHERE outcome = 'overridden' "
                "GROUP BY 1 ORDER BY 2 DESC"
            ).fetchall()
        return {
            "evaluations": [{"region": r, "verdict": v, "count": n} for r, v, n in verdicts],
            "feedback": [{"verdict": v, "outcome": o, "count": n} for v, o, n in outcomes],
            "override_reasons": [{"reason": r, "count": n} for r, n in overrides],
        }
