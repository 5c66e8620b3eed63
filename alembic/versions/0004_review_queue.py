"""Review queue: items claimed under a lease with a fencing token, and their audit trail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ONE_DECISION = sa.text("kind IN ('approve', 'correct', 'reject')")


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.Integer(), nullable=False),
        sa.Column("expiries", sa.Integer(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("request_body", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("field_confidence", sa.JSON(), nullable=True),
        sa.Column("schema_errors", sa.JSON(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(32), nullable=True),
        sa.Column("corrected_answer", sa.Text(), nullable=True),
        sa.Column("reject_reason", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_review_items_claim",
        "review_items",
        ["state", sa.text("priority DESC"), "created_at"],
    )
    op.create_index("ix_review_items_route_state", "review_items", ["route", "state"])
    op.create_index("ix_review_items_request", "review_items", ["request_id"])
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("claim_token", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
    )
    op.create_index("ix_review_decisions_item", "review_decisions", ["item_id", "id"])
    op.create_index(
        "ux_review_decisions_one_decision",
        "review_decisions",
        ["item_id"],
        unique=True,
        sqlite_where=ONE_DECISION,
        postgresql_where=ONE_DECISION,
    )


def downgrade() -> None:
    op.drop_index("ux_review_decisions_one_decision", "review_decisions")
    op.drop_index("ix_review_decisions_item", "review_decisions")
    op.drop_table("review_decisions")
    op.drop_index("ix_review_items_request", "review_items")
    op.drop_index("ix_review_items_route_state", "review_items")
    op.drop_index("ix_review_items_claim", "review_items")
    op.drop_table("review_items")
