"""Queries, grouped by table. Callers own the transaction (``async with session.begin()``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import String, Table, func, insert, literal, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.registry import AdapterVersionRecord, NewVersion, VersionConflict
from service.db.models import AdapterVersion, ApiKey, RequestRecord, Route
from service.review import queue


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


async def insert_records(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert request records and, in the same transaction, the review items they carry."""
    reviews = [review for row in rows if (review := row.pop("review", None)) is not None]
    # Core insert (executemany): the ORM bulk path costs more per row on the writer's loop.
    await session.execute(insert(cast(Table, RequestRecord.__table__)), rows)
    for review in reviews:
        await queue.enqueue(session, **review)


async def recent_records(session: AsyncSession, limit: int = 100) -> Sequence[RequestRecord]:
    return (
        await session.scalars(
            select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit)
        )
    ).all()


def _fields(new: NewVersion) -> dict[str, Any]:
    return {f.name: getattr(new, f.name) for f in dataclasses.fields(new)}


def _adapter_version(row: AdapterVersion) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        id=row.id,
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        pool=row.pool,
        base_model=row.base_model,
        rank=row.rank,
        alpha=row.alpha,
        target_modules=tuple(row.target_modules),
        size_bytes=row.size_bytes,
        store_path=Path(row.store_path),
        created_by=row.created_by,
        # SQLite hands back naive datetimes; every stored time is UTC.
        created_at=row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC),
        data_snapshot_id=row.data_snapshot_id,
        changelog=row.changelog,
    )


class SqlAdapterVersions:
    """``adapters.registry.VersionRepository`` on the database: one short transaction a call."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def find_by_content(self, name: str, sha256: str) -> AdapterVersionRecord | None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(AdapterVersion).where(
                    AdapterVersion.name == name, AdapterVersion.sha256 == sha256
                )
            )
        return _adapter_version(row) if row is not None else None

    async def insert_next(self, new: NewVersion) -> AdapterVersionRecord:
        # One statement computes N and inserts it: on SQLite a read followed by a write in one
        # transaction fails outright when another writer committed in between, and on
        # PostgreSQL a concurrent insert of the same N is refused by the unique constraint.
        next_version = (
            select(func.coalesce(func.max(AdapterVersion.version), 0) + 1)
            .where(AdapterVersion.name == new.name)
            .scalar_subquery()
        )
        statement = (
            insert(AdapterVersion)
            .values(
                {
                    **_fields(new),
                    "id": literal(f"{new.name}@", String) + sql_cast(next_version, String),
                    "version": next_version,
                    "target_modules": list(new.target_modules),
                    "store_path": str(new.store_path),
                }
            )
            .returning(AdapterVersion.id, AdapterVersion.version)
        )
        try:
            async with self.sessions.begin() as session:
                version_id, version = (await session.execute(statement)).one()
        except IntegrityError as exc:
            raise VersionConflict(str(exc.orig)) from exc
        return AdapterVersionRecord(id=version_id, version=version, **_fields(new))

    async def get(self, version_id: str) -> AdapterVersionRecord | None:
        async with self.sessions() as session:
            row = await session.get(AdapterVersion, version_id)
        return _adapter_version(row) if row is not None else None

    async def list_versions(self, name: str | None) -> list[AdapterVersionRecord]:
        query = select(AdapterVersion).order_by(AdapterVersion.name, AdapterVersion.version)
        if name is not None:
            query = query.where(AdapterVersion.name == name)
        async with self.sessions() as session:
            rows = (await session.scalars(query)).all()
        return [_adapter_version(row) for row in rows]
