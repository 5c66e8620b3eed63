"""The parts one gateway process serves with, built by ``create_app`` and kept on app.state."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, Tracer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from monitoring.metrics import UNKNOWN, Metrics
from monitoring.record_writer import RecordWriter
from service.engine.client import EngineClient
from service.record import RecordDraft
from service.settings import Settings
from service.snapshot import SnapshotStore

NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


@dataclass(slots=True)
class Gateway:
    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[Any]
    snapshot: SnapshotStore
    engines: EngineClient
    writer: RecordWriter
    metrics: Metrics
    tracer: Tracer
    tracing: bool

    def span(self, name: str) -> AbstractContextManager[Span]:
        """A tracing span, or a shared no-op context when tracing is off."""
        if self.tracing:
            return self.tracer.start_as_current_span(name)
        return NO_SPAN

    def finish(self, record: RecordDraft) -> None:
        """Count and queue the record of a request that has ended (never blocks)."""
        latency = record.elapsed_s()
        route = record.route or UNKNOWN
        m = self.metrics
        m.requests.labels(
            route, record.target or UNKNOWN, record.arm, str(record.status_code)
        ).inc()
        m.latency.labels(route, record.arm).observe(latency)
        if record.ttft_s is not None:
            m.ttft.labels(route, record.arm).observe(record.ttft_s)
        if record.tokens_in:
            m.tokens.labels(route, "prompt").inc(record.tokens_in)
        if record.tokens_out:
            m.tokens.labels(route, "completion").inc(record.tokens_out)
        self.writer.submit(record.row(latency, self.settings.redact_bodies))
