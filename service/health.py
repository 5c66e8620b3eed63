"""Process health, readiness and Prometheus metrics: part of the composition root, since
readiness gathers what every part reports (database, engines, records)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse, Response

from service.api.deps import SRE_ROLES, parts, require_roles
from service.auth import Principal
from service.gateway.parts import Gateway

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up", description="Always 200 while serving.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to serve",
    description=(
        "200 when the database answers and at least one engine replica passed its generation "
        "probe; 503 with the failing checks otherwise. A replica that has not answered yet "
        "(vLLM still loading, the bundled model being prepared) is `starting`. "
        "`checks.records` says how far request records are from the database (spool bytes, "
        "age of the oldest unshipped record, the shipper's last error); it does not decide "
        "readiness."
    ),
    responses={503: {"description": "Not ready; the body says which check failed."}},
)
async def readyz(request: Request) -> Response:
    gw: Gateway = parts(request)
    checks: dict[str, Any] = {}
    try:
        async with gw.db.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except (SQLAlchemyError, OSError) as exc:
        checks["database"] = f"failed: {type(exc).__name__}"
    pools: dict[str, dict[str, Any]] = {}
    for pool in gw.engines.pools.values():
        pools[pool.name] = {
            "healthy_replicas": pool.healthy_count(),
            # Unauthenticated endpoint: replica addresses stay out (they are in /metrics labels).
            "replicas": [
                {"replica": i, "state": r.shown_state, "last_error": r.last_error}
                for i, r in enumerate(pool.replicas)
            ],
        }
    checks["engines"] = pools
    # Records wait in the spool while the database is away: reported, not a reason to stop
    # serving on its own.
    checks["records"] = request.app.state.records.status()
    engines_ok = any(p["healthy_replicas"] > 0 for p in pools.values())
    ready = checks["database"] == "ok" and engines_ok
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description=(
        "Text exposition format. Needs a key with role `sre` or `admin` (the labels name "
        "replica addresses): give Prometheus one as a bearer token "
        "(`authorization: {credentials_file: ...}` in the scrape config)."
    ),
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        401: {"description": "Missing or invalid API key."},
        403: {"description": "The key's role is not sre or admin."},
    },
)
async def metrics(
    request: Request, _: Annotated[Principal, Depends(require_roles(*SRE_ROLES))]
) -> Response:
    return Response(
        generate_latest(parts(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
