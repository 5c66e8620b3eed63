"""Reading the audit trail (newest first, with filters and a cursor) and its retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import as_utc
from service.db.models import AuditEvent, AuditPruneCutoff


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
class StoredEvent:
    id: int
    at: datetime
    actor: str
    actor_role: str | None
    os_user: str | None
    action: str
    object: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    client: str | None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next_cursor: int | None  # None: no older events match


def _stored(row: AuditEvent) -> StoredEvent:
    return StoredEvent(
        id=row.id, at=as_utc(row.at), actor=row.actor, actor_role=row.actor_role,
        os_user=row.os_user, action=row.action, object=row.object, before=row.before,
        after=row.after, request_id=row.request_id, client=row.client,
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
    """Delete the events older than ``before`` in the caller's transaction.

    The append-only trigger lets a delete through only for events older than a cutoff row
    that exists at that moment; the row is written and removed again in this transaction.
    """
    cutoff = AuditPruneCutoff(cutoff=before)
    session.add(cutoff)
    await session.flush()
    result = await session.execute(delete(AuditEvent).where(AuditEvent.at < before))
    await session.delete(cutoff)
    await session.flush()
    return int(getattr(result, "rowcount", 0) or 0)
