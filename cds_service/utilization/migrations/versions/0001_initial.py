"""Evaluations per card, orders (latest card), feedback, seen token ids, service settings.

Revision ID: 0001_initial
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


LEGACY_TABLES = ("evaluations", "feedback", "seen_tokens")


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    legacy = "evaluations" in inspector.get_table_names() and "order_key" not in {
        c["name"] for c in inspector.get_columns("evaluations")}
    if legacy:
        # A CDS_FEEDBACK_DB file written before migrations existed: keep its rows, in the new shape.
        for table in LEGACY_TABLES:
            op.rename_table(table, f"legacy_{table}")
    create_tables()
    if legacy:
        copy_legacy_rows(bind)
        for table in LEGACY_TABLES:
            op.drop_table(f"legacy_{table}")


def copy_legacy_rows(bind) -> None:
    """Old evaluations and feedback into the new tables. Raw patient ids are not carried over:
    orders are grouped by a salted digest that is thrown away, so it cannot be reversed."""
    import hashlib
    import json
    import secrets
    from datetime import datetime, timezone

    salt = secrets.token_bytes(16)

    def when(text):
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment

    rows = bind.execute(sa.text("SELECT * FROM legacy_evaluations")).mappings().all()
    latest: dict = {}
    new_rows = []
    for row in rows:
        key = hashlib.sha256(salt + json.dumps([row["patient_id"], row["order_reference"]]).encode()).hexdigest()[:32]
        at = when(row["evaluated_at"])
        new_rows.append({
            "card_uuid": row["card_uuid"], "order_key": key, "evaluated_at": at, "service_id": row["service_id"],
            "hook": row["service_id"].removeprefix("spine-mri-"), "hook_instance": row["hook_instance"],
            "user_id": None, "patient_hash": None, "order_reference": row["order_reference"], "order_code": None,
            "region": row["region"], "contrast": row["contrast"], "verdict": row["verdict"], "variant": row["variant"],
            "rating": row["rating"], "red_flags": "[]", "unread_sources": "[]", "suggestion_kinds": "{}",
            "latency_ms": None, "mappings_version": None, "consult_id": row["consult_id"], "mode": "live",
            "synthetic": False})
        first, last, count, card = latest.get(key, (at, at, 0, row["card_uuid"]))
        latest[key] = (min(first, at), max(last, at), count + 1, row["card_uuid"] if at >= last else card)
    evaluations = sa.table("evaluations", *[sa.column(name) for name in (new_rows[0] if new_rows else {"card_uuid": 0})])
    if new_rows:
        bind.execute(sa.insert(evaluations), new_rows)
        orders = sa.table("orders", *[sa.column(n) for n in ("order_key", "latest_card_uuid", "latest_at", "first_at",
                                                              "evaluations")])
        bind.execute(sa.insert(orders), [{"order_key": k, "latest_card_uuid": card, "latest_at": last, "first_at": first,
                                          "evaluations": count} for k, (first, last, count, card) in latest.items()])
    feedback_rows = bind.execute(sa.text("SELECT * FROM legacy_feedback")).mappings().all()
    if feedback_rows:
        columns = ("dedup_key", "service_id", "card_uuid", "outcome", "accepted_kinds", "override_code",
                   "override_display", "user_comment", "outcome_timestamp", "received_at", "raw")
        feedback = sa.table("feedback", *[sa.column(n) for n in columns])
        bind.execute(sa.insert(feedback), [{
            "dedup_key": hashlib.sha256(f"{row['service_id']}\0{row['raw']}".encode()).hexdigest(),
            "service_id": row["service_id"], "card_uuid": row["card_uuid"], "outcome": row["outcome"],
            "accepted_kinds": json.dumps(["unknown"] * len(json.loads(row["accepted_suggestions"] or "[]"))),
            "override_code": row["override_code"], "override_display": row["override_display"],
            "user_comment": row["user_comment"], "outcome_timestamp": row["outcome_timestamp"],
            "received_at": when(row["received_at"]), "raw": row["raw"]} for row in feedback_rows])


def create_tables() -> None:
    op.create_table(
        "evaluations",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("order_key", sa.String(64), nullable=False),
        sa.Column("evaluated_at", sa.DateTime, nullable=False),
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
        sa.Column("red_flags", sa.Text, nullable=False),
        sa.Column("unread_sources", sa.Text, nullable=False),
        sa.Column("suggestion_kinds", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("mappings_version", sa.String(32)),
        sa.Column("consult_id", sa.String(64)),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("synthetic", sa.Boolean, nullable=False),
    )
    op.create_index("ix_evaluations_order_key", "evaluations", ["order_key"])
    op.create_index("ix_evaluations_evaluated_at", "evaluations", ["evaluated_at"])
    op.create_table(
        "orders",
        sa.Column("order_key", sa.String(64), primary_key=True),
        sa.Column("latest_card_uuid", sa.String(64), nullable=False),
        sa.Column("latest_at", sa.DateTime, nullable=False),
        sa.Column("first_at", sa.DateTime, nullable=False),
        sa.Column("evaluations", sa.Integer, nullable=False),
    )
    op.create_index("ix_orders_latest_at", "orders", ["latest_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_kinds", sa.Text, nullable=False),
        sa.Column("override_code", sa.String(128)),
        sa.Column("override_display", sa.String(512)),
        sa.Column("user_comment", sa.Text),
        sa.Column("outcome_timestamp", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_table(
        "seen_tokens",
        sa.Column("iss", sa.String(512), primary_key=True),
        sa.Column("jti", sa.String(512), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    # the replay check is a primary-key probe; pruning expired ids is a range scan of this index
    op.create_index("ix_seen_tokens_expires_at", "seen_tokens", ["expires_at"])
    op.create_table(
        "service_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("service_settings", "seen_tokens", "feedback", "orders", "evaluations"):
        op.drop_table(table)
