"""How request records reach the database: the spool, the shipper and what they write.

Composition only: the spool and the shipper (``monitoring``) know nothing of tables; this
module hands them the writes, where a record's review item (the review domain's) goes in with
its record, in the same transaction, exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics
from monitoring.shipper import Maintenance, Shipper
from monitoring.spool import Spool
from service.audit.retention import audit_pruner
from service.clock import now
from service.db import repositories
from service.db.session import create_engine
from service.gateway.keeper import RecordKeeper
from service.gateway.record import FinishedRecord, decode
from service.review import queue
from service.settings import Settings

PRUNE_BATCH = 1000
PRUNE_EVERY_S = 300.0


async def write_records(session: AsyncSession, records: list[FinishedRecord]) -> None:
    """Request records and the review items they carry; what is there already stays as it is."""
    await repositories.insert_records(session, [record.row for record in records])
    items = [record.review for record in records if record.review is not None]
    if items:
        await queue.enqueue_shipped(session, items)


async def ship_records(session: AsyncSession, payloads: list[bytes]) -> None:
    await write_records(session, [decode(payload) for payload in payloads])


def pruner(retention_days: float) -> Maintenance | None:
    """Retention: delete old records in small transactions (none a review item names)."""

    async def prune(sessions: async_sessionmaker[Any]) -> None:
        before = now() - timedelta(days=retention_days)
        while True:
            async with sessions.begin() as session:
                deleted = await repositories.prune_records(session, before, PRUNE_BATCH)
            if deleted < PRUNE_BATCH:
                return

    return prune if retention_days > 0 else None


def maintenance(settings: Settings) -> Maintenance | None:
    """Record retention, then audit retention (each its own setting); None when neither."""
    tasks = [
        task
        for task in (
            pruner(settings.record_retention_days),
            audit_pruner(
                settings.audit_retention_days, settings.audit_signing_key.get_secret_value()
            ),
        )
        if task is not None
    ]
    if not tasks:
        return None

    async def run(sessions: async_sessionmaker[Any]) -> None:
        for task in tasks:
            await task(sessions)

    return run


@dataclass(frozen=True, slots=True)
class Records:
    spool: Spool
    shipper: Shipper
    keeper: RecordKeeper
    metrics: Metrics

    def start(self) -> None:
        """Take the spool (shipping what a previous process left first) and start shipping."""
        self.spool.open()
        if self.spool.torn_segments:
            # A record cut by a crash inside its append: its answer had not gone out.
            self.metrics.records_dropped.labels("torn").inc(self.spool.torn_segments)
        self.shipper.start()

    async def stop(self, timeout_s: float) -> None:
        """Ship what is spooled, as far as the database takes it in ``timeout_s``; the rest
        stays in the spool for the next start."""
        await asyncio.to_thread(self.shipper.stop, timeout_s)
        self.spool.close()

    def status(self) -> dict[str, Any]:
        return {
            "spool_bytes": self.spool.size_bytes,
            "oldest_unshipped_s": round(self.spool.oldest_unshipped_s(), 3),
            # /readyz needs no key: the class of the error, never its text (which can name the
            # database's host and port).
            "last_error": self.shipper.last_error_type,
        }


def build(
    settings: Settings, metrics: Metrics, tracer: Tracer, sessions: async_sessionmaker[Any]
) -> Records:
    spool = Spool(
        settings.effective_spool_dir, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync
    )
    metrics.track_spool(lambda: spool.size_bytes, spool.oldest_unshipped_s)
    shipper = Shipper(
        spool,
        lambda: create_engine(settings.effective_database_url),
        ship_records,
        metrics,
        tracer,
        interval_s=settings.record_flush_interval_s,
        batch_records=settings.record_batch_size,
        fsync_interval_s=settings.spool_fsync_interval_s,
        maintenance=maintenance(settings),
        maintenance_every_s=PRUNE_EVERY_S,
    )
    keeper = RecordKeeper(
        spool,
        settings.records_when_full,
        metrics,
        sessions,
        write_records,
        settings.hold_commit_timeout_s,
    )
    return Records(spool, shipper, keeper, metrics)
