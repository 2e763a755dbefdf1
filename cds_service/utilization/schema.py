"""The tables (SQLAlchemy Core). Alembic's `migrations/` builds them; `tests/test_store.py` holds
the two to the same columns on SQLite and PostgreSQL.

- `evaluations`: one row per card issued (a hook call rates each MRI order with one card).
- `orders`: one row per order (patient, encounter, order id): its latest card, and when it was
  signed as another study (order-sign naming the same order, no longer an MRI).
- `feedback`: CDS Hooks feedback, joined to its card; a retry is stored once.
- `seen_tokens`: client JWT ids (jti) until they expire: a token is accepted once, on any instance.
- `service_settings`: the patient-hash key when `CDS_PATIENT_HASH_KEY` is unset.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("order_key", sa.String(64), nullable=False, index=True),
    sa.Column("evaluated_at", sa.DateTime, nullable=False, index=True),  # UTC
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("hook", sa.String(32), nullable=False),
    sa.Column("hook_instance", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(256)),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("order_reference", sa.String(256), nullable=False),
    sa.Column("order_code", sa.String(256)),
    sa.Column("region", sa.String(32)),
    sa.Column("contrast", sa.String(32)),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("rating", sa.String(32)),
    sa.Column("red_flags", sa.Text, nullable=False),  # JSON list of concept ids
    sa.Column("unread_sources", sa.Text, nullable=False),  # JSON list of prefetch keys
    sa.Column("suggestion_kinds", sa.Text, nullable=False),  # JSON {suggestion uuid: kind}
    sa.Column("latency_ms", sa.Float),  # the evaluation's own time
    sa.Column("mappings_version", sa.String(32)),
    sa.Column("consult_id", sa.String(64)),
    sa.Column("mode", sa.String(16), nullable=False),  # live | shadow
    sa.Column("synthetic", sa.Boolean, nullable=False, default=False),  # demo history, never real
    # 0002
    sa.Column("fingerprint", sa.String(64), index=True),  # hooks' Evaluation.fingerprint (order + record)
    sa.Column("override_reasons", sa.Text),  # JSON {code: display} the card offered; NULL: written before 0002
    sa.Column("http_ms", sa.Float),  # the HTTP request's time, as the EHR waited for the answer
    sa.Column("site", sa.String(256)),  # the encounter's location or service, when the EHR named one
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_key", sa.String(64), primary_key=True),
    sa.Column("latest_card_uuid", sa.String(64), nullable=False),
    sa.Column("latest_at", sa.DateTime, nullable=False, index=True),
    sa.Column("first_at", sa.DateTime, nullable=False),
    sa.Column("evaluations", sa.Integer, nullable=False),
    # 0002: order-sign named this order as another study (not a spine MRI any more)
    sa.Column("signed_other_at", sa.DateTime),
    sa.Column("signed_other_code", sa.String(256)),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
    sa.Column("service_id", sa.String(64), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("accepted_kinds", sa.Text, nullable=False),  # JSON list of suggestion kinds
    sa.Column("override_code", sa.String(128)),
    sa.Column("override_display", sa.String(512)),  # the card's own display for the code
    sa.Column("user_comment", sa.Text),  # the comment, once (capped: store.MAX_COMMENT_CHARS)
    sa.Column("outcome_timestamp", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),  # the item as posted, without its userComment
)

seen_tokens = sa.Table(
    "seen_tokens",
    metadata,
    sa.Column("iss", sa.String(512), primary_key=True),
    sa.Column("jti", sa.String(512), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

service_settings = sa.Table(
    "service_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
