"""Evaluation packs: immutable, versioned sets of cases per route (service.evaluation).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_packs",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.UniqueConstraint("route", "name", "version", name="uq_eval_packs_version"),
    )
    op.create_table(
        "eval_cases",
        sa.Column("pack_id", sa.String(300), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=True),
        sa.Column("slices", sa.JSON(), nullable=False),
        sa.Column("review_item_id", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("eval_cases")
    op.drop_table("eval_packs")
