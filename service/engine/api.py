"""Which replica of each engine pool holds which adapter versions, and runs which, for SREs."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from service.api.deps import SRE_ROLES, parts, require_roles
from service.auth import Principal
from service.engine.pool import EnginePool

router = APIRouter(prefix="/v1/admin/engine", tags=["engine"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is neither sre nor admin."},
}


class ReplicaOut(BaseModel):
    url: str
    state: str = Field(description="`starting`, `unknown`, `healthy` or `ejected`.")
    in_flight: int = Field(description="Requests this gateway has on the replica now.")
    held: list[str] = Field(description="Adapter versions the replica serves (GET /v1/models).")
    running: dict[str, int] = Field(
        description="Requests this gateway has in flight there per target: the versions in its "
        "slots, as far as this gateway's traffic goes."
    )
    engine_running: list[str] = Field(
        description="The adapters the replica's running batch used at the last reconcile pass, "
        "every gateway's requests included (its vllm:lora_requests_info); pools with a declared "
        "capacity only."
    )


class PoolOut(BaseModel):
    name: str
    base_model: str
    max_loras: int | None = Field(description="Slots per replica, when declared.")
    capacity: int | None = Field(
        description="Versions each replica holds, when declared; null: every version a route "
        "wants is on every replica."
    )
    replicas: list[ReplicaOut]


class PlacementOut(BaseModel):
    data: list[PoolOut]


class Pools(Protocol):
    @property
    def pools(self) -> dict[str, EnginePool]: ...


class EngineParts(Protocol):
    @property
    def engines(self) -> Pools: ...


@router.get(
    "/placement",
    summary="Which replica holds and runs which adapter versions",
    response_model=PlacementOut,
    responses=ERRORS,
)
async def placement(request: Request, _: SreKey) -> PlacementOut:
    gateway: EngineParts = parts(request)
    return PlacementOut(data=[pool_out(pool) for pool in gateway.engines.pools.values()])


def pool_out(pool: EnginePool) -> PoolOut:
    return PoolOut(
        name=pool.name,
        base_model=pool.base_model,
        max_loras=pool.max_loras,
        capacity=pool.capacity,
        replicas=[
            ReplicaOut(
                url=r.url,
                state=r.shown_state,
                in_flight=r.in_flight,
                held=sorted(r.loaded),
                running=dict(sorted(r.running.items())),
                engine_running=sorted(r.engine_running),
            )
            for r in pool.replicas
        ],
    )
