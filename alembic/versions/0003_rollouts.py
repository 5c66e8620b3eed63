"""Rollouts, their event history, and the request-record columns gates read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RECORD_COLUMNS = (
    sa.Column("rollout_id", sa.String(32), nullable=True),
    sa.Column("shadow_of", sa.String(36), nullable=True),
    sa.Column("agreement", sa.JSON(), nullable=True),
    sa.Column("schema_valid", sa.Boolean(), nullable=True),
    sa.Column("confidence", sa.Float(), nullable=True),
    sa.Column("escalated", sa.Boolean(), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("request_records") as batch:
        for column in RECORD_COLUMNS:
            batch.add_column(column.copy())
    op.create_index(
        "ix_request_records_rollout_created", "request_records", ["rollout_id", "created_at"]
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("active_route", sa.String(200), nullable=True),
        sa.Column("stable", sa.String(300), nullable=False),
        sa.Column("candidate", sa.String(300), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("inconclusive", sa.Integer(), nullable=False),
        sa.Column("paused_phase", sa.String(16), nullable=True),
        sa.Column("verdicts", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("active_route", name="uq_rollouts_active_route"),
    )
    op.create_index("ix_rollouts_route_created", "rollouts", ["route", "created_at"])
    op.create_table(
        "rollout_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_phase", sa.String(16), nullable=False),
        sa.Column("to_phase", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("rollout_id", "version", name="uq_rollout_events_rollout_version"),
    )


def downgrade() -> None:
    op.drop_table("rollout_events")
    op.drop_index("ix_rollouts_route_created", "rollouts")
    op.drop_table("rollouts")
    op.drop_index("ix_request_records_rollout_created", "request_records")
    with op.batch_alter_table("request_records") as batch:
        for column in reversed(RECORD_COLUMNS):
            batch.drop_column(column.name)
