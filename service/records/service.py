"""The record's parts built and run together: the spool, the keeper and the shipper, writing
each record with what it carries for another domain (an escalated answer's review item) in one
transaction, exactly once. Which function writes an attachment, and what else runs between
batches (audit retention), the composition root decides."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics
from service.db.session import Maintenance, create_engine
from service.records import store
from service.records.draft import Attachment, FinishedRecord, decode
from service.records.keeper import RecordKeeper
from service.records.shipper import Shipper
from service.records.spool import Spool
from service.settings import Settings

PRUNE_EVERY_S = 300.0
# Writes the attachments of a batch of records, in the records' transaction; an attachment
# already written (a record shipped twice) is left as it is.
AttachmentWriter = Callable[[AsyncSession, list[Attachment]], Awaitable[None]]


def writer(
    attached: AttachmentWriter,
) -> Callable[[AsyncSession, list[FinishedRecord]], Awaitable[None]]:
    """Request records and what they carry; what is there already stays as it is."""

    async def write(session: AsyncSession, records: list[FinishedRecord]) -> None:
        await store.insert_records(session, [record.row for record in records])
        attachments = [record.review for record in records if record.review is not None]
        if attachments:
            await attached(session, attachments)

    return write


def shipping(attached: AttachmentWriter) -> Callable[[AsyncSession, list[bytes]], Awaitable[None]]:
    """What the shipper does with a batch of spooled records."""
    write = writer(attached)

    async def ship(session: AsyncSession, payloads: list[bytes]) -> None:
        await write(session, [decode(payload) for payload in payloads])

    return ship


def maintenance(tasks: Sequence[Maintenance | None]) -> Maintenance | None:
    """The given jobs one after the other (None when there is none)."""
    jobs = [task for task in tasks if task is not None]
    if not jobs:
        return None

    async def run(sessions: async_sessionmaker[Any]) -> None:
        for job in jobs:
            await job(sessions)

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
    settings: Settings,
    metrics: Metrics,
    tracer: Tracer,
    sessions: async_sessionmaker[Any],
    attached: AttachmentWriter,
    also_maintain: Sequence[Maintenance | None] = (),
) -> Records:
    """The parts, from the settings; ``attached`` writes what records carry, ``also_maintain``
    runs after record retention between batches."""
    spool = Spool(
        settings.effective_spool_dir, max_bytes=settings.spool_max_bytes, fsync=settings.spool_fsync
    )
    metrics.track_spool(lambda: spool.size_bytes, spool.oldest_unshipped_s)
    shipper = Shipper(
        spool,
        lambda: create_engine(settings.effective_database_url),
        shipping(attached),
        metrics,
        tracer,
        interval_s=settings.record_flush_interval_s,
        batch_records=settings.record_batch_size,
        fsync_interval_s=settings.spool_fsync_interval_s,
        maintenance=maintenance([store.pruner(settings.record_retention_days), *also_maintain]),
        maintenance_every_s=PRUNE_EVERY_S,
    )
    keeper = RecordKeeper(
        spool,
        settings.records_when_full,
        metrics,
        sessions,
        writer(attached),
        settings.hold_commit_timeout_s,
    )
    return Records(spool, shipper, keeper, metrics)
