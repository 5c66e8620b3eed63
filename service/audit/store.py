"""Reading the audit trail (newest first, with filters and a cursor), walking its hash chain,
and its retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import retention_actor
from service.audit.chain import PRUNE, ChainWalk, EventFields, Head, Link, Verdict, prune_record
from service.audit.events import lock_head, record_event
from service.clock import as_utc
from service.db.models import AuditChainHead, AuditEvent, AuditPruneCutoff

VERIFY_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuditFilters:
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    actor: str | None = None
    action: str | None = None
    object: str | None = None
    cursor: int | None = None  # the ``next_cursor`` of the previous page
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredEvent(EventFields):
    """An event as read back: what its hash covers, and its link of the chain."""

    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_cursor: int | None  # None: no older events match


def _stored(row: AuditEvent) -> StoredEvent:
    return StoredEvent(
        id=row.id, at=as_utc(row.at), actor=row.actor, actor_role=row.actor_role,
        os_user=row.os_user, action=row.action, object=row.object, before=row.before,
        after=row.after, request_id=row.request_id, client=row.client,
        prev_hash=row.prev_hash, hash=row.hash,
    )  # fmt: skip


async def list_events(session: AsyncSession, filters: AuditFilters) -> EventPage:
    """Events matching every filter given, newest first; a page ends with the cursor of the
    next one (events older than its last)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(filters.limit + 1)
    if filters.since is not None:
        query = query.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.at < filters.until)
    if filters.actor is not None:
        query = query.where(AuditEvent.actor == filters.actor)
    if filters.action is not None:
        query = query.where(AuditEvent.action == filters.action)
    if filters.object is not None:
        query = query.where(AuditEvent.object == filters.object)
    if filters.cursor is not None:
        query = query.where(AuditEvent.id < filters.cursor)
    rows = list((await session.scalars(query)).all())
    more = len(rows) > filters.limit
    events = [_stored(row) for row in rows[: filters.limit]]
    return EventPage(events, events[-1].id if more and events else None)


async def prune_events(session: AsyncSession, before: datetime) -> int:
    """Remove the oldest events, those written before ``before`` up to the first one that was
    not, in the caller's transaction; how many. A prefix only: the chain goes on from the
    ``audit.prune`` event written next, which records the last removed event's id and hash.

    The append-only trigger lets a delete through only for events older than a cutoff row that
    exists at that moment; the row is written and removed again in this transaction.
    """
    await lock_head(session)  # no event is chained while the prefix is chosen and removed
    first_kept = await session.scalar(
        select(func.min(AuditEvent.id)).where(AuditEvent.at >= before)
    )
    last_removed = select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    if first_kept is not None:
        last_removed = last_removed.where(AuditEvent.id < first_kept)
    through = (await session.execute(last_removed)).one_or_none()
    if through is None:
        return 0
    cutoff = AuditPruneCutoff(cutoff=before)
    session.add(cutoff)
    await session.flush()
    result = await session.execute(delete(AuditEvent).where(AuditEvent.id <= through.id))
    await session.delete(cutoff)
    await session.flush()
    removed = int(getattr(result, "rowcount", 0) or 0)
    after = prune_record(removed, Head(through.id, through.hash), before)
    await record_event(session, retention_actor(), PRUNE, "audit:events", after=after)
    return removed


async def _one_snapshot(session: AsyncSession) -> None:
    """Make every later read of the session see the database as of one moment, so that a change
    committed during the walk does not look like a break."""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    else:
        # pysqlite starts no transaction for reads: each SELECT would see its own moment.
        await session.execute(text("BEGIN"))


def _link(row: Row[Any]) -> Link:
    event = EventFields(
        id=row.id, at=row.at, actor=row.actor, actor_role=row.actor_role, os_user=row.os_user,
        action=row.action, object=row.object, before=row.before, after=row.after,
        request_id=row.request_id, client=row.client,
    )  # fmt: skip
    return Link(event, row.prev_hash, row.hash)


async def verify_chain(session: AsyncSession, key: bytes = b"") -> Verdict:
    """Walk every event, oldest first, and the head row (in a session that has read nothing
    yet: it is made to read one snapshot)."""
    await _one_snapshot(session)
    head_row = await session.get(AuditChainHead, 1)
    head = Head(head_row.last_id, head_row.hash) if head_row is not None else None
    walk = ChainWalk(key)
    columns = select(*AuditEvent.__table__.c).order_by(AuditEvent.id).limit(VERIFY_BATCH)
    last_id: int | None = None
    while True:
        query = columns if last_id is None else columns.where(AuditEvent.id > last_id)
        rows = (await session.execute(query)).all()
        for row in rows:
            walk.add(_link(row))
        if len(rows) < VERIFY_BATCH:
            return walk.finish(head)
        last_id = rows[-1].id
