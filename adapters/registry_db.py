"""The adapter registry on the database: its version table, and the registry wired to the
settings (one builder for the app and the CLI)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import String, func, insert, literal, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters.compat import PoolSpec
from adapters.inspect import Inspector, SubprocessInspector
from adapters.registry import (
    AdapterVersionRecord,
    NewVersion,
    Registry,
    RegistryConfig,
    VersionConflict,
)
from service.audit.actor import Actor
from service.audit.events import record_event
from service.clock import as_utc
from service.db.models import AdapterVersion
from service.settings import Settings


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
        created_at=as_utc(row.created_at),
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

    async def insert_next(self, new: NewVersion, audit: Actor | None) -> AdapterVersionRecord:
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
                if audit is not None:
                    after = {"sha256": new.sha256, "pool": new.pool, "changelog": new.changelog,
                             "data_snapshot_id": new.data_snapshot_id}  # fmt: skip
                    await record_event(
                        session, audit, "adapter.register", f"adapter:{version_id}", after=after
                    )
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


def build_registry(
    settings: Settings, sessions: async_sessionmaker[Any], inspector: Inspector | None = None
) -> Registry:
    """A registry over the configured pools; ``inspector`` replaces the peft worker in tests."""
    pools = tuple(
        PoolSpec(p.name, p.base_model, p.max_lora_rank, p.model_dir)
        for p in settings.engine_pools()
    )
    config = RegistryConfig(
        import_root=settings.effective_import_root,
        store_dir=settings.adapter_store_dir,
        max_bytes=settings.max_adapter_bytes,
        pools=pools,
    )
    worker = inspector or SubprocessInspector(
        sys.executable, settings.adapter_inspect_timeout_s, settings.adapter_inspect_concurrency
    )
    return Registry(config, SqlAdapterVersions(sessions), worker)
