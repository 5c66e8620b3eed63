"""The request records table: insert (at least once, so a re-shipped record is a no-op), prune
(in small batches, never a record a review item names) and read the newest."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import now
from service.db.models import RequestRecord, ReviewItem
from service.db.session import Maintenance, insert_ignoring_duplicates

PRUNE_BATCH = 1000


async def insert_records(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert request records; one whose id is there already is left as it is (re-shipping)."""
    # Core insert (executemany): the ORM bulk path costs more per row.
    table = cast(Table, RequestRecord.__table__)
    await session.execute(insert_ignoring_duplicates(session, table), list(rows))


async def prune_records(session: AsyncSession, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` records created before ``before`` that no review item names."""
    reviewed = select(ReviewItem.id).where(ReviewItem.request_id == RequestRecord.id)
    old = (
        select(RequestRecord.id)
        .where(RequestRecord.created_at < before, ~reviewed.exists())
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(delete(RequestRecord).where(RequestRecord.id.in_(old)))
    return int(getattr(result, "rowcount", 0) or 0)


async def recent_records(session: AsyncSession, limit: int = 100) -> Sequence[RequestRecord]:
    """The newest records, newest first."""
    return (
        await session.scalars(
            select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit)
        )
    ).all()


def pruner(retention_days: float) -> Maintenance | None:
    """Retention: delete old records in small transactions (none a review item names)."""

    async def prune(sessions: async_sessionmaker[Any]) -> None:
        before = now() - timedelta(days=retention_days)
        while True:
            async with sessions.begin() as session:
                deleted = await prune_records(session, before, PRUNE_BATCH)
            if deleted < PRUNE_BATCH:
                return

    return prune if retention_days > 0 else None
