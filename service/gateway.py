"""The parts one gateway process serves with, built by ``create_app`` and kept on app.state."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, Tracer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from adapters.registry import Registry
from monitoring.metrics import UNKNOWN, Metrics
from monitoring.record_writer import RecordWriter
from service.engine.client import EngineClient
from service.engine.reconciler import AdapterReconciler
from service.record import RecordDraft
from service.review.results import ReviewCallbacks
from service.rollout_control import RolloutControl
from service.settings import Settings
from service.shadow import ShadowCaller
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
    reconciler: AdapterReconciler
    adapters: Registry
    shadow: ShadowCaller
    rollouts: RolloutControl
    callbacks: ReviewCallbacks

    def span(self, name: str) -> AbstractContextManager[Span]:
        """A tracing span, or a shared no-op context when tracing is off."""
        if self.tracing:
            return self.tracer.start_as_current_span(name)
        return NO_SPAN

    def finish(self, record: RecordDraft) -> None:
        """Count and queue the record of a request that has ended (never blocks)."""
        latency = record.elapsed_s()
        labels = (
            record.route or UNKNOWN,
            record.target or UNKNOWN,
            record.arm,
            str(record.status_code),
        )
        self.metrics.request_done(
            labels, latency, record.ttft_s, record.tokens_in, record.tokens_out
        )
        self.writer.submit(record.row(latency, self.settings.redact_bodies))
