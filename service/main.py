"""The composition root: ``create_app(settings)`` builds every part and wires the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter

from adapters import api as adapters_api
from adapters.inspect import Inspector
from adapters.registry_db import build_registry
from monitoring.metrics import Metrics
from monitoring.tracing import build_provider, tracer_from
from rollout import api as rollouts_api
from rollout import console as rollout_console
from rollout.control import RolloutControl
from rollout.store import active_splits
from service import health
from service.api.deps import StoreParts
from service.api.edge import EdgeParts, document_the_edge
from service.api.errors import document_validation_errors_as_400, install_error_handlers
from service.audit import api as audit_api
from service.audit.retention import audit_pruner
from service.cards import api as cards_api
from service.clock import Clock, now
from service.db import repositories
from service.db.change_listener import ChangeListener
from service.db.config_version import ConfigVersionReader
from service.db.migrations import ensure_migrated
from service.db.session import create_engine, session_factory
from service.drift import api as drift_api
from service.drift.monitor import DriftMonitor
from service.drift.watch import DriftWatch
from service.engine import api as engine_api
from service.engine.adapter_host import AdapterHost
from service.engine.client import EngineClient
from service.engine.managed import ManagedEngine
from service.engine.peers import Peers
from service.engine.pool import EnginePool, HealthProber
from service.engine.reconciler import AdapterReconciler
from service.evaluation import api as eval_api
from service.evaluation import runs as eval_runs
from service.evaluation import runs_api as eval_runs_api
from service.evaluation.answering import EngineAnswers
from service.evaluation.executor import RunExecutor, RunLimits
from service.evaluation.for_rollouts import RolloutEvaluations
from service.gateway import endpoints as inference
from service.gateway.endpoints import GatewayApp
from service.gateway.parts import Gateway
from service.gateway.schema_checks import SchemaChecks, worker_processes
from service.gateway.shadow import ShadowCaller
from service.guard import refusal
from service.keys.lookups import KeyLookups
from service.limits.limiter import build_limiter
from service.records import service as records
from service.review import api as reviews_api
from service.review import export_api as reviews_export
from service.review import results_api as review_results
from service.review import ui as review_ui
from service.review.outbox import Backoff
from service.review.results import ReviewCallbacks
from service.review.service import ReviewParts
from service.review.shipped import write_shipped_items
from service.review.sla import sla_targets
from service.review.stats import ReviewStats
from service.routes import api as routes_admin
from service.routes.config import DEFAULT_ROUTES, load_routes_file, sync_routes
from service.routes.snapshot import SnapshotStore
from service.routes.view import Snapshot
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
An inference gateway for fine-tuned models. Applications call the OpenAI-compatible API with a
**route** name as `model`; the gateway checks the key, bounds the request, sends it to a vLLM
engine, relays the answer and records every request.

A route may carry an output contract (JSON Schema): its answers are validated, scored for
confidence from token logprobs (`loragate` metadata in the answer) and, per the route's review
policy, sent to the review queue (`/v1/reviews`). New adapter versions go live through gated
rollouts (`/v1/admin/rollouts`): shadow traffic, a sticky canary share, automatic promotion or
rollback. Each route's version is watched for drift against a frozen reference
(`/v1/admin/drift`).

Authenticate with `Authorization: Bearer <key>`. Errors use the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`.
"""


async def _sync_routes(gw: Gateway) -> None:
    pools = gw.settings.engine_pools()
    async with gw.sessions.begin() as session:
        if gw.settings.routes_file is not None:
            names = await sync_routes(session, load_routes_file(gw.settings.routes_file), pools)
            log.info("routes synced from %s: %s", gw.settings.routes_file, ", ".join(names))
        elif not await repositories.list_routes(session):
            await sync_routes(session, DEFAULT_ROUTES, pools)
            log.info("no routes configured; created the default route 'chat'")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    gw: Gateway = app.state.gateway
    settings = gw.settings
    recorder: records.Records = app.state.records
    try:
        await ensure_migrated(gw.db)
        await _sync_routes(gw)
        await gw.snapshot.reload()
        recorder.start()
    except BaseException:
        await gw.db.dispose()
        raise
    # Idle connections are dropped before the engine drops them (vLLM: 5 s), or a request could
    # go out on a connection the engine is closing (seen: a probe failed with ClientOSError).
    connector = aiohttp.TCPConnector(
        limit=0, ttl_dns_cache=300, keepalive_timeout=settings.engine_keepalive_s
    )
    http = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    gw.engines.attach(http)
    gw.callbacks.attach(http)
    tasks: list[asyncio.Task[Any]] = []
    managed: ManagedEngine | None = None
    if settings.uses_managed_engine:
        managed = ManagedEngine(
            settings.managed_engine, settings.data_dir, gw.metrics, settings.otlp_endpoint
        )
        tasks.append(asyncio.create_task(managed.run(), name="managed-engine"))
    prober = HealthProber(
        list(gw.engines.pools.values()),
        http,
        settings.health_probe_interval_s,
        settings.health_probe_timeout_s,
        failures_to_eject=settings.probe_failures_to_eject,
    )
    tasks.append(asyncio.create_task(prober.run(), name="health-prober"))
    tasks.append(asyncio.create_task(gw.snapshot.run(), name="snapshot-refresh"))
    listener: ChangeListener | None = app.state.change_listener
    peers: Peers | None = app.state.peers
    if listener is not None:
        tasks.append(asyncio.create_task(listener.run(), name="change-listener"))
    if peers is not None:
        tasks.append(asyncio.create_task(peers.run(), name="gateway-peers"))
    tasks.append(asyncio.create_task(gw.reconciler.run(), name="adapter-reconciler"))
    rollouts: RolloutControl = app.state.rollouts
    tasks.append(asyncio.create_task(rollouts.run(), name="rollout-analysis"))
    evaluations: RunExecutor = app.state.evaluations
    tasks.append(asyncio.create_task(evaluations.run(), name="evaluation-sweep"))
    tasks.append(asyncio.create_task(gw.callbacks.run(), name="review-callbacks"))
    stats = ReviewStats(
        gw.sessions, gw.metrics, now, settings.review_stats_interval_s, sla_targets(settings)
    )
    tasks.append(asyncio.create_task(stats.run(), name="review-stats"))
    if settings.drift_interval_s > 0:
        watch = DriftWatch(app.state.drift, gw.metrics, settings.drift_interval_s)
        tasks.append(asyncio.create_task(watch.run(), name="drift-gauges"))
    # Everything built so far lives as long as the process: keep it out of the cyclic GC's
    # scans, which otherwise walk the whole framework heap and showed up as p99 spikes.
    gc.freeze()
    try:
        yield
    finally:
        if managed is not None:
            await managed.stop()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("background task %s had failed: %r", task.get_name(), result)
        await evaluations.close()
        if peers is not None:
            await peers.leave()
        await gw.shadow.close()
        await gw.callbacks.close()
        await gw.schema_checks.close()
        await gw.limits.close()
        await recorder.stop(settings.record_drain_timeout_s)
        await http.close()
        gw.snapshot.close()
        await gw.db.dispose()
        if app.state.tracer_provider is not None:
            app.state.tracer_provider.shutdown()


def _wake_on_new_versions(reconciler: AdapterReconciler) -> Callable[[Snapshot, Snapshot], None]:
    def listener(old: Snapshot, new: Snapshot) -> None:
        pools = {r.pool for r in new.routes.values()}
        if any(old.wanted_adapters(p) != new.wanted_adapters(p) for p in pools):
            reconciler.wake()

    return listener


def _hold_callback(snapshot: SnapshotStore) -> Callable[[str], str | None]:
    def url(route_name: str) -> str | None:
        route = snapshot.current.routes.get(route_name)
        policy = route.contract.policy if route and route.contract else None
        return policy.callback_url if policy and policy.delivery == "hold" else None

    return url


def surfaces_of(
    gateway: Gateway,
) -> tuple[EdgeParts, StoreParts, ReviewParts, review_ui.UiParts, routes_admin.RoutesParts]:
    """The parts as each HTTP surface reads them (``service.api.deps.parts``): mypy checks
    here that they satisfy every surface's protocol, which no surface can check itself."""
    return gateway, gateway, gateway, gateway, gateway


def create_app(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    adapter_inspector: Inspector | None = None,
    clock: Clock = now,
) -> GatewayApp:
    metrics = Metrics()
    provider = build_provider(settings.otlp_endpoint, span_exporter)
    tracer = tracer_from(provider)
    db = create_engine(settings.effective_database_url)
    sessions = session_factory(db, audit_signing_key=settings.audit_signing_key.get_secret_value())
    pools = {
        cfg.name: EnginePool(cfg, metrics, settings.eject_for_s) for cfg in settings.engine_pools()
    }
    engines = EngineClient(pools, metrics, settings)
    signing_key = settings.audit_signing_key.get_secret_value()
    recorder = records.build(
        settings, metrics, tracer, sessions, write_shipped_items,
        also_maintain=[audit_pruner(settings.audit_retention_days, signing_key)],
    )  # fmt: skip
    # On PostgreSQL gateways hear each other's changes at once and unload versions only when
    # no other gateway needs them; on SQLite there is one gateway and the periodic refresh.
    in_step = db.dialect.name == "postgresql"
    listener = ChangeListener(db, lambda: snapshot.wake()) if in_step else None
    snapshot = SnapshotStore(
        sessions,
        settings.snapshot_refresh_s,
        splits=active_splits,
        evaluating=eval_runs.evaluating,
        lookups=KeyLookups(
            settings.key_lookups_per_s, settings.unknown_keys_remembered, time.monotonic
        ),
        metrics=metrics,
        config_version=ConfigVersionReader.of(settings.effective_database_url),
        listening=listener.connected if listener is not None else None,
    )
    peers = None
    if in_step:
        peers = Peers(
            sessions, lambda: snapshot.current, list(pools.values()),
            heartbeat_s=settings.peer_heartbeat_s, stale_after_s=settings.peer_stale_after_s,
        )  # fmt: skip
        snapshot.on_reload.append(lambda _old, _new: peers.poke())
    reconciler = AdapterReconciler(
        list(pools.values()),
        AdapterHost(lambda: engines.http),
        snapshot,
        metrics,
        interval_s=settings.adapter_reconcile_interval_s,
        unload_grace_s=settings.adapter_unload_grace_s,
        others=peers,
    )
    snapshot.on_reload.append(_wake_on_new_versions(reconciler))
    evaluations = RunExecutor(
        sessions,
        snapshot,
        EngineAnswers(engines, settings),
        lambda pool, version, path: reconciler.place(pools[pool], version, path),
        {name: pool.base_model for name, pool in pools.items()},
        RunLimits(settings.eval_max_runs, settings.eval_heartbeat_s, settings.eval_stale_after_s),
    )
    rollouts = RolloutControl(
        sessions, snapshot, engines, reconciler, metrics, clock=clock,
        interval_s=settings.rollout_tick_s, evaluations=RolloutEvaluations(sessions, evaluations),
    )  # fmt: skip
    gateway = Gateway(
        settings=settings,
        db=db,
        sessions=sessions,
        snapshot=snapshot,
        engines=engines,
        records=recorder.keeper,
        metrics=metrics,
        tracer=tracer,
        tracing=provider is not None,
        reconciler=reconciler,
        shadow=ShadowCaller(
            engines,
            metrics,
            lambda record: gateway.finish(record),
            max_concurrency=settings.shadow_max_concurrency,
            timeout_s=settings.shadow_timeout_s,
        ),
        callbacks=ReviewCallbacks(
            sessions,
            _hold_callback(snapshot),
            settings.review_callback_allowlist,
            Backoff(
                settings.review_callback_backoff_s,
                settings.review_callback_backoff_max_s,
                settings.review_callback_attempts,
            ),
            settings.review_callback_poll_s,
            clock,
        ),
        schema_checks=SchemaChecks(
            refusal,
            metrics,
            executor=worker_processes(settings.schema_check_workers),
            workers=settings.schema_check_workers,
            max_waiting=settings.schema_check_queue,
            cache_size=settings.schema_check_cache,
        ),
        limits=build_limiter(settings, db, metrics),
    )
    surfaces_of(gateway)
    app = GatewayApp(
        gateway,
        title="loragate",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.tracer_provider = provider
    app.state.records = recorder
    app.state.rollouts = rollouts
    app.state.evaluations = evaluations
    app.state.adapters = build_registry(settings, sessions, adapter_inspector)
    app.state.drift = DriftMonitor(sessions, settings, clock)
    app.state.peers = peers
    app.state.change_listener = listener
    # A trailing-slash redirect would be built from the client's Host header.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    document_validation_errors_as_400(app)
    document_the_edge(app)
    app.include_router(inference.router)
    app.include_router(health.router)
    app.include_router(routes_admin.router)
    app.include_router(engine_api.router)
    app.include_router(adapters_api.router)
    app.include_router(cards_api.router)
    app.include_router(rollouts_api.router)
    app.include_router(drift_api.router)
    app.include_router(eval_api.router)
    app.include_router(eval_runs_api.router)
    app.include_router(audit_api.router)
    app.include_router(review_results.router)
    app.include_router(reviews_api.router)
    app.include_router(reviews_export.router)
    app.include_router(review_ui.router)
    app.include_router(rollout_console.router)
    return app
