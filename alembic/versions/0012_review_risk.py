"""Review by risk: tiers, two-person review, QA sampling, reviewer agreement, queue SLA.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ITEM_COLUMNS = ("risk", "reviews_needed", "votes", "sla_breached_at")


def upgrade() -> None:
    op.add_column(
        "routes", sa.Column("risk", sa.String(16), server_default="medium", nullable=False)
    )
    op.add_column("api_keys", sa.Column("allowed_tiers", sa.JSON(), nullable=True))
    op.add_column(
        "review_items",
        sa.Column("risk", sa.String(16), server_default="medium", nullable=False),
    )
    op.add_column(
        "review_items",
        sa.Column("reviews_needed", sa.Integer(), server_default="1", nullable=False),
    )
    op.add_column(
        "review_items", sa.Column("votes", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "review_items",
        sa.Column("sla_breached_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "review_votes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("corrected_answer", sa.Text(), nullable=True),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("claim_token", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("item_id", "reviewer", name="uq_review_votes_item_reviewer"),
        sa.UniqueConstraint("item_id", "seq", name="uq_review_votes_item_seq"),
    )


def downgrade() -> None:
    op.drop_table("review_votes")
    for column in reversed(ITEM_COLUMNS):
        op.drop_column("review_items", column)
    op.drop_column("api_keys", "allowed_tiers")
    op.drop_column("routes", "risk")
