"""The audit trail becomes a hash chain: a deletion or edit by hand is seen by `audit verify`.

Every event carries ``prev_hash`` (the hash of the event before it) and ``hash`` (over that and
the event's fields, ``service.audit.chain``). ``audit_chain_head`` holds the newest event's id
and hash: writers lock it, so the chain never forks, and it shows when the newest events are
gone. Its trigger lets it only move forward; the events' triggers are those of 0013.

Events written before this migration are chained here, with plain SHA-256 (no signing key: a
migration reads no settings). With ``LORAGATE_AUDIT_SIGNING_KEY`` set, the first signed event
vouches for every link before it.

On SQLite, making the new columns NOT NULL rebuilds the table, which drops its triggers: they
are dropped first and created again at the end, on both dialects.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.audit.chain import GENESIS, EventFields, link_hash

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

APPEND_ONLY = "audit events are append-only"  # the message of 0013's triggers
PRUNABLE = "EXISTS (SELECT 1 FROM audit_prune_cutoffs c WHERE OLD.at < c.cutoff)"
FORWARD_ONLY = "the audit chain head only moves forward"
# An update of the head that keeps it where it is (a writer taking its lock) or moves it on.
FORWARD = "NEW.id = OLD.id AND (NEW.last_id > OLD.last_id OR (NEW.last_id = OLD.last_id AND NEW.hash = OLD.hash))"  # noqa: E501

POSTGRES_EVENT_TRIGGERS = [
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
]
SQLITE_EVENT_TRIGGERS = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
    f"CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events WHEN NOT {PRUNABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
]
POSTGRES_HEAD_TRIGGERS = [
    f"""
    CREATE FUNCTION audit_chain_head_forward() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF {FORWARD} THEN
                RETURN NEW;
            END IF;
        END IF;
        RAISE EXCEPTION '{FORWARD_ONLY}' USING ERRCODE = 'insufficient_privilege';
    END
    $$ LANGUAGE plpgsql
    """,
    "CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE OR DELETE ON audit_chain_head "
    "FOR EACH ROW EXECUTE FUNCTION audit_chain_head_forward()",
    "CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head_forward()",
]
SQLITE_HEAD_TRIGGERS = [
    f"CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head "
    f"WHEN NOT ({FORWARD}) BEGIN SELECT RAISE(ABORT, '{FORWARD_ONLY}'); END",
    "CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head "
    f"BEGIN SELECT RAISE(ABORT, '{FORWARD_ONLY}'); END",
]

EVENTS = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor", sa.String()),
    sa.column("actor_role", sa.String()),
    sa.column("os_user", sa.String()),
    sa.column("action", sa.String()),
    sa.column("object", sa.String()),
    sa.column("before", sa.JSON()),
    sa.column("after", sa.JSON()),
    sa.column("request_id", sa.String()),
    sa.column("client", sa.String()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _drop_event_triggers() -> None:
    if _postgres():
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")


def _create_event_triggers() -> None:
    for statement in POSTGRES_EVENT_TRIGGERS if _postgres() else SQLITE_EVENT_TRIGGERS:
        op.execute(statement)


def _chain_existing_events() -> tuple[int, str]:
    """Give every event its link, oldest first; the newest id and hash (0 and the genesis hash
    when there are none)."""
    connection = op.get_bind()
    rows = connection.execute(sa.select(EVENTS).order_by(EVENTS.c.id)).all()
    last_id, last_hash = 0, GENESIS
    links: list[dict[str, object]] = []
    for row in rows:
        event = EventFields(
            id=row.id, at=row.at, actor=row.actor, actor_role=row.actor_role,
            os_user=row.os_user, action=row.action, object=row.object, before=row.before,
            after=row.after, request_id=row.request_id, client=row.client,
        )  # fmt: skip
        digest = link_hash(last_hash, event)
        links.append({"event_id": row.id, "link_prev": last_hash, "link_hash": digest})
        last_id, last_hash = row.id, digest
    if links:
        connection.execute(
            sa.update(EVENTS)
            .where(EVENTS.c.id == sa.bindparam("event_id"))
            .values(prev_hash=sa.bindparam("link_prev"), hash=sa.bindparam("link_hash")),
            links,
        )
    return last_id, last_hash


def upgrade() -> None:
    _drop_event_triggers()
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.String(64), nullable=True))
    last_id, last_hash = _chain_existing_events()
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_one_row"),
    )
    op.bulk_insert(head, [{"id": 1, "last_id": last_id, "hash": last_hash}])
    _create_event_triggers()
    for statement in POSTGRES_HEAD_TRIGGERS if _postgres() else SQLITE_HEAD_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("audit_chain_head")  # its triggers go with it
    if _postgres():
        op.execute("DROP FUNCTION audit_chain_head_forward()")
    _drop_event_triggers()
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
    _create_event_triggers()
