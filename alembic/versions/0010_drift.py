"""Drift monitoring: request records keep their answer's binned field values, and each route's
versions keep a frozen reference to compare live traffic with.

``request_records.fields`` holds an answer's values of its contract's top-level categorical and
number fields. ``drift_references`` holds at most one automatic and one pinned reference per
route and version: the time range it covers and, once computed, its histograms (``profile``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_records") as batch:
        batch.add_column(sa.Column("fields", sa.JSON(), nullable=True))
    op.create_table(
        "drift_references",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("route", "target", "pinned", name="uq_drift_references_kind"),
    )


def downgrade() -> None:
    op.drop_table("drift_references")
    with op.batch_alter_table("request_records") as batch:
        batch.drop_column("fields")
