"""The shipper: moves sealed spool segments into the database, in its own thread and event loop.

Each pass seals the open segment when it holds records, then ships the ready segments in order,
several to a transaction, and deletes them once that transaction committed. What ``sink``
writes must be idempotent (the record id is the key; a re-shipped segment inserts nothing
twice), so a crash between the commit and the delete costs nothing.

A database that cannot be reached (a transient error) leaves the segments where they are and
is retried with backoff; the spool grows meanwhile. A batch the database refuses (a data error)
is shipped again one record at a time, and only the records it refuses are dropped, counted
with reason ``rejected``. The shipper knows no tables: the composition root hands it ``sink``
(and ``maintenance``, e.g. retention, run from the same thread off the request path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import Tracer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics
from monitoring.outages import store_unreachable
from service.db.session import Maintenance
from service.records.spool import Segment, Spool
from service.settings import Fsync

log = logging.getLogger(__name__)

Sink = Callable[[AsyncSession, list[bytes]], Awaitable[None]]

# What writing a batch can raise: the database's errors, the network's, and a payload that
# cannot be read back (a bug or a frame from an incompatible version).
SHIP_ERRORS = (SQLAlchemyError, OSError, TimeoutError, ValueError, KeyError, TypeError)
BACKOFF_MAX_S = 5.0
ERROR_LOG_EVERY_S = 10.0


class Shipper:
    def __init__(
        self,
        spool: Spool,
        connect: Callable[[], AsyncEngine],
        sink: Sink,
        metrics: Metrics,
        tracer: Tracer,
        *,
        interval_s: float,
        batch_records: int,
        fsync_interval_s: float,
        maintenance: Maintenance | None = None,
        maintenance_every_s: float = 300.0,
    ) -> None:
        self._spool = spool
        self._connect = connect
        self._sink = sink
        self._metrics = metrics
        self._tracer = tracer
        self._interval_s = interval_s
        self._batch_records = batch_records
        self._fsync_interval_s = fsync_interval_s
        self._maintenance = maintenance
        self._maintenance_every_s = maintenance_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._backoff_s = 0.0
        self._last_error_log = 0.0
        # The last failure to reach the database, kept after it recovered (for /readyz).
        self.last_error: str | None = None  # for the log: may name the database's address
        self.last_error_type: str | None = None  # for anyone: the class alone
        # True while the thread waits, without a timer, for the spool's next record.
        self.asleep = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="record-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Ask for a last pass and wait for it; False when it did not end in time."""
        self._stop.set()
        if self._thread is None:
            return True
        if self._loop is not None and self._wakeup is not None and self._thread.is_alive():
            # The loop may end between the check and the call; then there is nobody to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wakeup.set)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        engine = self._connect()
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        next_sync = next_pass = next_maintenance = time.monotonic()
        next_maintenance += min(self._maintenance_every_s, 60.0)
        syncing = self._spool.fsync is Fsync.INTERVAL
        self._spool.on_new_segment = self._nudge
        try:
            while not self._stop.is_set():
                if not self._backoff_s and self._spool.empty():
                    # No timer while there is nothing to ship: an idle gateway stays asleep.
                    # The first record after the quiet spell wakes the thread, and waits one
                    # interval for company before its pass.
                    until = next_maintenance if self._maintenance is not None else None
                    self.asleep = True
                    woken = await self._sleep_until(until)
                    self.asleep = False
                    if self._stop.is_set():
                        break
                    if woken:
                        now = time.monotonic()
                        next_pass = max(next_pass, now + self._interval_s)
                        next_sync = max(next_sync, now + self._fsync_interval_s)
                now = time.monotonic()
                if syncing and now >= next_sync:
                    next_sync = now + self._fsync_interval_s
                    await self._guarded(self._sync())
                if now >= next_pass:
                    # Each pass costs a seal, a transaction and a delete whatever it carries:
                    # at a few requests a second, passes every 0.2 s cost the gateway more CPU
                    # per request than serving them (measured), so they come once an interval.
                    await self._guarded(self._pass(sessions))
                    next_pass = time.monotonic() + (self._backoff_s or self._interval_s)
                if self._maintenance is not None and now >= next_maintenance:
                    await self._maintain(sessions)
                    next_maintenance = now + self._maintenance_every_s
                wake = min(next_pass, next_sync) if syncing else next_pass
                await self._sleep(max(0.0, wake - time.monotonic()))
            await self._guarded(self._pass(sessions))  # what was appended before the stop
        finally:
            self._spool.on_new_segment = None
            await engine.dispose()

    def _nudge(self) -> None:
        """From an appending thread: a segment was opened (see ``Spool.on_new_segment``)."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            # The loop may have ended meanwhile; then the stop's last pass ships the record.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wakeup.set)

    async def _sleep_until(self, deadline: float | None) -> bool:
        """Sleep until woken (True: a stop or a new segment) or until ``deadline`` on the
        monotonic clock (False)."""
        assert self._wakeup is not None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return False
        if not self._stop.is_set():
            self._wakeup.clear()
        return True

    async def _sync(self) -> None:
        self._spool.sync()  # blocks this thread's loop only, never the gateway's

    async def _guarded(self, step: Awaitable[None]) -> None:
        """Run one step; the spool's own files failing (an I/O error) must not end the thread:
        nothing is deleted, and the next turn tries again."""
        try:
            await step
        except OSError as exc:
            log.error("reading or syncing the record spool failed: %s", exc)
            self._failed(exc, 0)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken."""
        await self._sleep_until(time.monotonic() + seconds)

    async def _pass(self, sessions: async_sessionmaker[Any]) -> None:
        if self._spool.has_open_records():
            self._spool.seal()
        ready = self._spool.ready()
        while ready:
            batch: list[tuple[Segment, list[bytes]]] = []
            size = 0
            while ready and (not batch or size < self._batch_records):
                segment = ready.pop(0)
                frames = self._spool.read(segment)
                if frames.torn_bytes:
                    self._metrics.records_dropped.labels("torn").inc()
                    log.error("spool segment %s ends in a torn frame", segment.path.name)
                batch.append((segment, frames.payloads))
                size += len(frames.payloads)
            if not await self._ship(sessions, batch):
                return  # the database is away: keep everything, retry after the backoff

    async def _ship(
        self, sessions: async_sessionmaker[Any], batch: list[tuple[Segment, list[bytes]]]
    ) -> bool:
        payloads = [p for _, ps in batch for p in ps]
        shipped = len(payloads)
        try:
            if payloads:
                with self._tracer.start_as_current_span("records.ship") as span:
                    span.set_attribute("loragate.records", len(payloads))
                    async with sessions.begin() as session:
                        await self._sink(session, payloads)
        except SHIP_ERRORS as exc:
            if store_unreachable(exc):
                self._failed(exc, len(payloads))
                return False
            log.warning("a batch of %d records was refused (%s); shipping them one by one",
                        len(payloads), type(exc).__name__)  # fmt: skip
            rejected = await self._ship_each(sessions, payloads)
            if rejected is None:
                return False
            shipped -= rejected
        self._spool.shipped([segment for segment, _ in batch])
        self._metrics.records_shipped.inc(shipped)
        self._backoff_s = 0.0
        return True

    async def _ship_each(
        self, sessions: async_sessionmaker[Any], payloads: list[bytes]
    ) -> int | None:
        """Ship one record per transaction; how many were refused, None when the database
        went away meanwhile (nothing is deleted then)."""
        rejected = 0
        for payload in payloads:
            try:
                async with sessions.begin() as session:
                    await self._sink(session, [payload])
            except SHIP_ERRORS as exc:
                if store_unreachable(exc):
                    self._failed(exc, 1)
                    return None
                rejected += 1
                self._metrics.records_dropped.labels("rejected").inc()
                log.error("the database refused a request record; dropped: %s: %s",
                          type(exc).__name__, exc)  # fmt: skip
        return rejected

    def _failed(self, exc: BaseException, records: int) -> None:
        self._metrics.record_write_failures.inc(records)
        self._backoff_s = min(BACKOFF_MAX_S, max(self._interval_s, self._backoff_s * 2 or 0.25))
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.last_error_type = type(exc).__name__
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("records are not reaching the database (%s); they wait in the spool "
                        "(%d bytes)", self.last_error, self._spool.size_bytes)  # fmt: skip

    async def _maintain(self, sessions: async_sessionmaker[Any]) -> None:
        assert self._maintenance is not None
        try:
            await self._maintenance(sessions)
        except SHIP_ERRORS as exc:
            # Maintenance (retention) is retried at its next turn; shipping goes on meanwhile.
            log.warning("record maintenance failed: %s: %s", type(exc).__name__, exc)
