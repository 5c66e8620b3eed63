"""Every change to what the gateways' snapshot holds is seen by the database itself.

Triggers on routes, api_keys, adapter_versions and rollouts (a rollout's update only when its
traffic may change) tell the gateways: on SQLite they count the changes in ``config_version``,
which the periodic refresh reads; on PostgreSQL they send the ``NOTIFY`` that every gateway
listens for (delivered on commit; a shared counter row there would queue concurrent writers and
could deadlock them), and the row stays at 0. Any writer is seen, the CLI's, another version's
or a hand-written ``UPDATE``.

A later migration that rebuilds one of these tables on SQLite (batch mode copies the table)
drops its triggers and must create them again: ``tests/service/test_config_changes.py`` fails
until it does.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

TABLES = ("routes", "api_keys", "adapter_versions")
# The rollout columns the snapshot's traffic split is built from; analysis ticks that only
# save verdicts and figures change none of them.
ROLLOUT_COLUMNS = ("route", "candidate", "spec", "phase", "paused_phase", "step")
CHANNEL = "loragate_changes"  # service.db.change_listener.CHANNEL


def _sqlite_triggers() -> list[str]:
    bump = "BEGIN UPDATE config_version SET n = n + 1; END"
    statements = [
        f"CREATE TRIGGER {table}_{event.lower()}_counted AFTER {event} ON {table} {bump}"
        for table in (*TABLES, "rollouts")
        for event in ("INSERT", "UPDATE", "DELETE")
        if not (table == "rollouts" and event == "UPDATE")
    ]
    moved = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in ROLLOUT_COLUMNS)
    statements.append(
        f"CREATE TRIGGER rollouts_update_counted AFTER UPDATE ON rollouts WHEN {moved} {bump}"
    )
    return statements


def _postgres_triggers() -> list[str]:
    statements = [
        f"""
        CREATE FUNCTION loragate_config_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    ]
    statements += [
        f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION loragate_config_changed()"
        for table in TABLES
    ]
    # json has no equality operator: compare its text.
    moved = " OR ".join(
        f"OLD.{c}::text IS DISTINCT FROM NEW.{c}::text" if c == "spec"
        else f"OLD.{c} IS DISTINCT FROM NEW.{c}"
        for c in ROLLOUT_COLUMNS
    )  # fmt: skip
    statements += [
        "CREATE TRIGGER rollouts_changed AFTER INSERT OR DELETE OR TRUNCATE ON rollouts "
        "FOR EACH STATEMENT EXECUTE FUNCTION loragate_config_changed()",
        f"CREATE TRIGGER rollouts_moved AFTER UPDATE ON rollouts FOR EACH ROW WHEN ({moved}) "
        "EXECUTE FUNCTION loragate_config_changed()",
    ]
    return statements


def upgrade() -> None:
    op.create_table(
        "config_version",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO config_version (id, n) VALUES (1, 0)")
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _postgres_triggers() if postgres else _sqlite_triggers():
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_changed ON {table}")
        op.execute("DROP TRIGGER rollouts_changed ON rollouts")
        op.execute("DROP TRIGGER rollouts_moved ON rollouts")
        op.execute("DROP FUNCTION loragate_config_changed()")
    else:
        for table in (*TABLES, "rollouts"):
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_{event}_counted")
    op.drop_table("config_version")
