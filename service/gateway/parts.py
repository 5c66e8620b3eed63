"""The parts one gateway process serves with, built by ``create_app`` and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.types import Scope

from monitoring.metrics import UNKNOWN, Metrics
from service.auth import Principal
from service.engine.client import EngineClient
from service.engine.reconciler import AdapterReconciler
from service.errors import AuthenticationFailed
from service.gateway.schema_checks import SchemaChecks
from service.gateway.shadow import ShadowCaller
from service.gateway.spans import NO_TRACE, RequestTrace
from service.keys.credentials import bearer_token, split_key, verify
from service.limits.limiter import Grant, Limiter
from service.records.draft import RecordDraft
from service.records.keeper import RecordKeeper
from service.review.results import ReviewCallbacks
from service.routes.snapshot import SnapshotStore
from service.settings import Settings


@dataclass(slots=True)
class Gateway:
    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[Any]
    snapshot: SnapshotStore
    engines: EngineClient
    records: RecordKeeper
    metrics: Metrics
    tracer: Tracer
    tracing: bool
    reconciler: AdapterReconciler
    shadow: ShadowCaller
    callbacks: ReviewCallbacks
    schema_checks: SchemaChecks
    limits: Limiter

    async def identify(self, authorization: str | None) -> Principal:
        """The principal behind a bearer key (any role); the database only for unknown key ids."""
        key_id, secret = split_key(bearer_token(authorization))
        stored = self.snapshot.current.keys.get(key_id)
        if stored is None:
            stored = await self.snapshot.find_key(key_id)
        return verify(stored, secret)

    async def caller(self, authorization: str | None) -> Principal | AuthenticationFailed:
        """The principal, or the refusal to answer. A refusal is counted
        (``loragate_unauthenticated_requests_total``) and never recorded: a flood of made-up
        keys would otherwise cost a database row each."""
        try:
            return await self.identify(authorization)
        except AuthenticationFailed as refusal:
            self.metrics.unauthenticated.labels(refusal.code).inc()
            return refusal

    def trace(self, scope: Scope, record: RecordDraft) -> RequestTrace:
        """The request's GenAI spans, or ``NO_TRACE`` (nothing built) when tracing is off."""
        if not self.tracing:
            return NO_TRACE
        bodies, adapters = self.settings.effective_record_bodies, self.snapshot.current.adapters
        return RequestTrace(self.tracer, scope, record.endpoint, record.id, bodies, adapters)

    def end(self, record: RecordDraft, grant: Grant | None) -> None:
        """A client request is over: out of the in-flight count, its key's limits settled with
        the tokens it used, its record spooled."""
        self.metrics.in_flight.dec()
        self.limits.end(grant, record.used_tokens())
        self.finish(record)

    def finish(self, record: RecordDraft) -> None:
        """Count the request and spool its record (never waits on the database)."""
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
        self.records.keep(record.finished(latency, self.settings.effective_record_bodies))
