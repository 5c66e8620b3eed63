"""Queries, grouped by table. Callers own the transaction (``async with session.begin()``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ApiKey, RequestRecord, ReviewItem, Route
from service.db.session import insert_ignoring_duplicates


async def list_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()


async def active_keys(session: AsyncSession) -> Sequence[ApiKey]:
    return (await session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)))).all()


async def get_active_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    )


async def count_keys(session: AsyncSession, role: str | None = None) -> int:
    query = select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
    if role is not None:
        query = query.where(ApiKey.role == role)
    return int(await session.scalar(query) or 0)


async def revoke_key(session: AsyncSession, key_id: str, when: datetime) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=when)
    )
    return bool(getattr(result, "rowcount", 0))


async def list_routes(session: AsyncSession) -> Sequence[Route]:
    return (await session.scalars(select(Route).order_by(Route.name))).all()


async def upsert_route(session: AsyncSession, values: dict[str, Any]) -> None:
    existing = await session.get(Route, values["name"])
    if existing is None:
        session.add(Route(**values))
        return
    for field, value in values.items():
        setattr(existing, field, value)


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
    return (
        await session.scalars(
            select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit)
        )
    ).all()
