"""Routes for SREs: list them, and switch a route's target to another version atomically."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from service.api.deps import SRE_ROLES, StoreParts, parts, require_roles
from service.audit.actor import api_actor
from service.auth import Principal
from service.engine.client import EngineClient
from service.engine.reconciler import AdapterReconciler
from service.guard.tiers import Risk
from service.routes import switch, targets
from service.routes.snapshot import SnapshotStore
from service.routes.targets import RouteInfo


class RoutesParts(StoreParts, Protocol):
    """What the routes API uses: the database, and for a switch the engines, the adapter
    reconciler and the served snapshot."""

    @property
    def engines(self) -> EngineClient: ...

    @property
    def reconciler(self) -> AdapterReconciler: ...

    @property
    def snapshot(self) -> SnapshotStore: ...


def routes_parts(request: Request) -> RoutesParts:
    found: RoutesParts = parts(request)
    return found


router = APIRouter(prefix="/v1/admin/routes", tags=["routes"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]


class RouteOut(BaseModel):
    name: str
    pool: str
    target: str = Field(description="The base model name or an adapter version `name@N`.")
    max_tokens_cap: int | None
    default_max_tokens: int | None
    description: str
    updated_at: datetime
    risk: Risk = Field(
        description="The route's risk tier (`low`, `medium`, `high` or `critical`): how much "
        "human review its answers get by default."
    )

    @classmethod
    def of(cls, route: RouteInfo) -> RouteOut:
        return cls.model_validate(route, from_attributes=True)


class TargetIn(BaseModel):
    target: str = Field(
        description="An adapter version `name@N` registered for the route's pool, or `base`.",
        examples=["ticket-triage@3", "base"],
    )


@router.get("", summary="List routes", response_model=list[RouteOut])
async def list_routes(request: Request, _: SreKey) -> list[RouteOut]:
    async with routes_parts(request).sessions() as session:
        return [RouteOut.of(r) for r in await targets.list_routes(session)]


@router.put(
    "/{name}/target",
    summary="Switch a route to another target",
    description=(
        "Loads the version on every replica of the route's pool and checks that each can "
        "generate with it; only then is the route switched. Requests in flight finish on the "
        "version they started with; new requests use the new one. Idempotent. When any "
        "replica fails, the version is unloaded from every replica (502)."
    ),
    response_model=RouteOut,
    responses={
        404: {"description": "No such route or adapter version."},
        409: {"description": "The route has an active rollout."},
        502: {"description": "A replica could not load the version."},
    },
)
async def set_target(name: str, body: TargetIn, request: Request, principal: SreKey) -> RouteOut:
    gw = routes_parts(request)
    route = await switch.switch(
        gw.sessions, gw.engines, gw.reconciler, gw.snapshot, name, body.target,
        api_actor(principal, request),
    )  # fmt: skip
    return RouteOut.of(route)
