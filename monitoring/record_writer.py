"""Background batched writer for request records.

``submit`` never blocks a response: it puts the record on a bounded queue, and a full queue
drops the record and counts it (``loragate_records_dropped``) with a warning in the log, unless
the caller asks to ``keep`` it. One task takes records off the queue and hands each batch, in
one transaction, to ``persist`` (given by the composition root: this package knows no domain
tables); ``close`` drains what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics

log = logging.getLogger(__name__)

DROP_LOG_EVERY_S = 10.0

R = TypeVar("R")


class RecordWriter(Generic[R]):
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        persist: Callable[[AsyncSession, list[R]], Awaitable[None]],
        metrics: Metrics,
        tracer: Tracer,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
    ) -> None:
        self._sessions = sessions
        self._persist = persist
        self._metrics = metrics
        self._tracer = tracer
        # None on the queue wakes the writer at close.
        self._queue: asyncio.Queue[R | None] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_drop_log = 0.0
        self._overflow: list[R] = []
        metrics.track_queue_depth(self._queue.qsize)

    def submit(self, record: R, *, keep: bool = False) -> bool:
        """Queue ``record``; with ``keep`` it is written even past a full queue or at close."""
        if self._closing and not keep:
            self._dropped("the writer is shutting down")
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            if keep:
                # Kept records (escalations) are a small share, so this list stays short.
                self._overflow.append(record)
                return True
            self._dropped("the queue is full")
            return False
        return True

    def _dropped(self, why: str) -> None:
        self._metrics.records_dropped.inc()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning("request record dropped: %s (see loragate_records_dropped)", why)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def close(self, timeout_s: float = 15.0) -> None:
        self._closing = True
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            # A full queue means the writer is not parked on get(); it sees _closing by itself.
            log.debug("record queue full at close; the writer drains it")
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._task, timeout_s)
        except TimeoutError:
            lost = self._queue.qsize()
            self._metrics.record_write_failures.inc(lost)
            log.error("record writer did not drain in %.0fs; %d records lost", timeout_s, lost)

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._write(batch)
            if self._closing and self._queue.empty() and not self._overflow:
                return

    async def _next_batch(self) -> list[R]:
        first = await self._queue.get()
        batch = [] if first is None else [first]
        batch.extend(self._overflow)
        self._overflow.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval_s
        while len(batch) < self._batch_size:
            try:
                record = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if self._closing or remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.02))
                continue
            if record is not None:
                batch.append(record)
        return batch

    async def _write(self, batch: list[R]) -> None:
        with self._tracer.start_as_current_span("records.write") as span:
            span.set_attribute("loragate.records", len(batch))
            try:
                async with self._sessions.begin() as session:
                    await self._persist(session, batch)
            except Exception:
                # The batch is lost; say so loudly and keep the writer alive for the next one.
                self._metrics.record_write_failures.inc(len(batch))
                log.exception("writing %d request records failed", len(batch))
                return
        self._metrics.records_written.inc(len(batch))
