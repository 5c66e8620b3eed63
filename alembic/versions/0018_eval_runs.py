"""Evaluation runs and their answers (service.evaluation.runs), and a rollout's evaluation run.

A run that starts or ends changes what the gateways must keep loaded (a running run's versions
are wanted on its pool), so inserting a run and changing its status tell the gateways as the
tables of 0014 do; its heartbeat does not.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    "CREATE TRIGGER eval_runs_insert_counted AFTER INSERT ON eval_runs "
    "BEGIN UPDATE config_version SET n = n + 1; END",
    "CREATE TRIGGER eval_runs_status_counted AFTER UPDATE OF status ON eval_runs "
    "WHEN OLD.status IS NOT NEW.status BEGIN UPDATE config_version SET n = n + 1; END",
]
POSTGRES_TRIGGERS = [
    "CREATE TRIGGER eval_runs_changed AFTER INSERT OR DELETE OR TRUNCATE ON eval_runs "
    "FOR EACH STATEMENT EXECUTE FUNCTION loragate_config_changed()",
    "CREATE TRIGGER eval_runs_status_moved AFTER UPDATE ON eval_runs FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION loragate_config_changed()",
]


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("pack_id", sa.String(300), nullable=False),
        sa.Column("pool", sa.String(100), nullable=False),
        sa.Column("candidate", sa.String(300), nullable=False),
        sa.Column("baseline_ref", sa.String(300), nullable=True),
        sa.Column("baseline", sa.String(300), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_by", sa.String(32), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=True),
    )
    op.create_index("ix_eval_runs_route_created", "eval_runs", ["route", "created_at"])
    op.create_table(
        "eval_answers",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("arm", sa.String(16), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("schema_valid", sa.Boolean(), nullable=True),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
    )
    # A plain ADD COLUMN: a batch copy of rollouts would drop its 0014 triggers on SQLite.
    op.add_column("rollouts", sa.Column("evaluation_run", sa.String(32), nullable=True))
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.drop_column("rollouts", "evaluation_run")
    op.drop_table("eval_answers")
    op.drop_index("ix_eval_runs_route_created", table_name="eval_runs")
    op.drop_table("eval_runs")  # its triggers go with it
