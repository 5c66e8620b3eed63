"""The composition root: ``create_app(settings)`` builds every part and wires the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace.export import SpanExporter
from starlette.exceptions import HTTPException
from starlette.responses import Response

from adapters.inspect import Inspector
from monitoring.metrics import Metrics
from monitoring.record_writer import RecordWriter
from monitoring.review_stats import ReviewStats
from monitoring.tracing import build_provider, tracer_from
from service.api import adapters as adapters_api
from service.api import health, inference, review_results, review_ui, reviews_export, routes_admin
from service.api import reviews as reviews_api
from service.api import rollouts as rollouts_api
from service.db import repositories
from service.db.migrations import ensure_migrated
from service.db.session import create_engine, session_factory
from service.engine.adapter_host import AdapterHost
from service.engine.client import EngineClient
from service.engine.managed import ManagedEngine
from service.engine.pool import EnginePool, HealthProber
from service.engine.reconciler import AdapterReconciler
from service.errors import FrameworkHTTPError, GatewayError, InvalidRequest
from service.fast_path import GatewayApp
from service.gateway import Gateway
from service.registration import build_registry
from service.review.results import ReviewCallbacks
from service.rollout_control import Clock, RolloutControl, utc_now
from service.routes_config import DEFAULT_ROUTES, load_routes_file, sync_routes
from service.settings import Settings
from service.shadow import ShadowCaller
from service.snapshot import Snapshot, SnapshotStore

log = logging.getLogger(__name__)
# Where FastAPI says it found a problem: the first part of an error's location.
REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})
SHOWN_ERRORS = 3
INVALID_REQUEST_DOC = (
    "Invalid request: the OpenAI error envelope with code `invalid_request`, naming the field."
)

DESCRIPTION = """
An inference gateway for fine-tuned models. Applications call the OpenAI-compatible API with a
**route** name as `model`; the gateway checks the key, bounds the request, sends it to a vLLM
engine, relays the answer and records every request.

A route may carry an output contract (JSON Schema): its answers are validated, scored for
confidence from token logprobs (`loragate` metadata in the answer) and, per the route's review
policy, sent to the review queue (`/v1/reviews`). New adapter versions go live through gated
rollouts (`/v1/admin/rollouts`): shadow traffic, a sticky canary share, automatic promotion or
rollback.

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
    try:
        await ensure_migrated(gw.db)
        await _sync_routes(gw)
        await gw.snapshot.reload()
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
        managed = ManagedEngine(settings.managed_engine, settings.data_dir, gw.metrics)
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
    tasks.append(asyncio.create_task(gw.reconciler.run(), name="adapter-reconciler"))
    tasks.append(asyncio.create_task(gw.rollouts.run(), name="rollout-analysis"))
    stats = ReviewStats(gw.sessions, gw.metrics, utc_now, settings.review_stats_interval_s)
    tasks.append(asyncio.create_task(stats.run(), name="review-stats"))
    gw.writer.start()
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
        await gw.shadow.close()
        await gw.callbacks.close()
        await gw.writer.close()
        await http.close()
        await gw.db.dispose()
        if app.state.tracer_provider is not None:
            app.state.tracer_provider.shutdown()


def _field(error: Mapping[str, Any]) -> str:
    """The dotted path of the field an error is about, without FastAPI's ``body``/``query``."""
    loc = [str(part) for part in error.get("loc", ())]
    if error.get("type") == "json_invalid":
        return "body"  # its location is a character offset, not a field
    path = loc[1:] if loc and loc[0] in REQUEST_PARTS else loc
    return ".".join(path) or (loc[0] if loc else "request")


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> InvalidRequest:
    """A readable 400 from pydantic's errors: each field and message, never the input sent."""
    shown = [f"{_field(e)}: {e.get('msg', 'invalid value')}" for e in errors[:SHOWN_ERRORS]]
    more = len(errors) - len(shown)
    message = "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")
    return InvalidRequest(
        message or "Invalid request.", param=_field(errors[0]) if errors else None
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def gateway_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return exc.to_response()

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = "No such endpoint." if exc.status_code == 404 else str(exc.detail)
        return FrameworkHTTPError(detail, exc.status_code, exc.headers).to_response()

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return invalid_request(exc.errors()).to_response()

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _document_validation_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents request validation errors as 422; this gateway answers them with 400
    in the OpenAI envelope (``invalid_request``), so the description says that instead."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.get("422", {}).get("description") == "Validation Error":
                    del responses["422"]  # FastAPI's own, not a 422 the endpoint answers
                    known = responses.get("400", {}).get("description", "")
                    described = f"{known} {INVALID_REQUEST_DOC}" if known else INVALID_REQUEST_DOC
                    responses["400"] = {**responses.get("400", {}), "description": described}
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def create_app(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    adapter_inspector: Inspector | None = None,
    clock: Clock = utc_now,
) -> FastAPI:
    metrics = Metrics()
    provider = build_provider(settings.otlp_endpoint, span_exporter)
    tracer = tracer_from(provider)
    db = create_engine(settings.effective_database_url)
    sessions = session_factory(db)
    pools = {
        cfg.name: EnginePool(cfg, metrics, settings.eject_for_s) for cfg in settings.engine_pools()
    }
    engines = EngineClient(pools, metrics, settings)
    writer = RecordWriter(
        sessions,
        metrics,
        tracer,
        queue_size=settings.record_queue_size,
        batch_size=settings.record_batch_size,
        flush_interval_s=settings.record_flush_interval_s,
    )
    snapshot = SnapshotStore(sessions, settings.snapshot_refresh_s)
    reconciler = AdapterReconciler(
        list(pools.values()),
        AdapterHost(lambda: engines.http),
        snapshot,
        metrics,
        interval_s=settings.adapter_reconcile_interval_s,
        unload_grace_s=settings.adapter_unload_grace_s,
    )
    snapshot.on_reload.append(_wake_on_new_versions(reconciler))
    rollouts = RolloutControl(
        sessions, snapshot, engines, reconciler, metrics, clock=clock,
        interval_s=settings.rollout_tick_s,
    )  # fmt: skip
    gateway = Gateway(
        settings=settings,
        db=db,
        sessions=sessions,
        snapshot=snapshot,
        engines=engines,
        writer=writer,
        metrics=metrics,
        tracer=tracer,
        tracing=provider is not None,
        reconciler=reconciler,
        adapters=build_registry(settings, sessions, adapter_inspector),
        shadow=ShadowCaller(
            engines,
            metrics,
            lambda record: gateway.finish(record),
            max_concurrency=settings.shadow_max_concurrency,
            timeout_s=settings.shadow_timeout_s,
        ),
        rollouts=rollouts,
        callbacks=ReviewCallbacks(
            sessions, _hold_callback(snapshot), settings.review_callback_allowlist
        ),
    )
    app = GatewayApp(
        gateway,
        title="loragate",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.tracer_provider = provider
    # A trailing-slash redirect would be built from the client's Host header.
    app.router.redirect_slashes = False
    _install_error_handlers(app)
    _document_validation_errors_as_400(app)
    app.include_router(inference.router)
    app.include_router(health.router)
    app.include_router(routes_admin.router)
    app.include_router(adapters_api.router)
    app.include_router(rollouts_api.router)
    app.include_router(review_results.router)
    app.include_router(reviews_api.router)
    app.include_router(reviews_export.router)
    app.include_router(review_ui.router)
    return app
