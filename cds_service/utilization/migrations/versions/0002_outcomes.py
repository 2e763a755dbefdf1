"""What each order became, and what the card offered: evaluations.fingerprint (indexed),
override_reasons, http_ms and site; orders.signed_other_at and signed_other_code.

Revision ID: 0002_outcomes
Revises: 0001_initial
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_outcomes"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns only: rows written before keep NULL (no fingerprint, offered reasons unknown).
    op.add_column("evaluations", sa.Column("fingerprint", sa.String(64)))
    op.add_column("evaluations", sa.Column("override_reasons", sa.Text))
    op.add_column("evaluations", sa.Column("http_ms", sa.Float))
    op.add_column("evaluations", sa.Column("site", sa.String(256)))
    op.create_index("ix_evaluations_fingerprint", "evaluations", ["fingerprint"])
    op.add_column("orders", sa.Column("signed_other_at", sa.DateTime))
    op.add_column("orders", sa.Column("signed_other_code", sa.String(256)))


def downgrade() -> None:
    op.drop_column("orders", "signed_other_code")
    op.drop_column("orders", "signed_other_at")
    op.drop_index("ix_evaluations_fingerprint", "evaluations")
    for column in ("site", "http_ms", "override_reasons", "fingerprint"):
        op.drop_column("evaluations", column)
