"""Adapter versions for SREs: register one from a directory under the import root, list them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from adapters.registry import ADAPTER_NAME, AdapterVersionRecord, RegistrationRequest, Registry
from service.api.deps import SRE_ROLES, parts, require_roles
from service.audit.actor import api_actor
from service.auth import Principal
from service.engine.client import EngineClient

router = APIRouter(prefix="/v1/admin/adapters", tags=["adapters"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid name, pool or path (outside the import root, '..', a URL)."},
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is not sre or admin."},
}


class RegisterAdapterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=ADAPTER_NAME.pattern,
        description="Adapter name; versions are `name@1`, `name@2`, ... (no '@' in it).",
        examples=["ticket-triage"],
    )
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Directory on the gateway's machine holding adapter_config.json and "
        "adapter_model.safetensors: absolute, or relative to the adapter import root, and "
        "under that root either way. URLs and hub ids are refused.",
        examples=["ticket-triage/run-7"],
    )
    pool: str | None = Field(
        default=None,
        max_length=200,
        description="Engine pool whose base model the adapter is for (default: the first).",
    )
    data_snapshot_id: str | None = Field(
        default=None, max_length=200, description="Id of the training data snapshot, if known."
    )
    changelog: str = Field(
        default="", max_length=10_000, description="What changed from the previous version."
    )


class AdapterVersionOut(BaseModel):
    id: str = Field(description="`name@version`: the name engines serve it under.")
    name: str
    version: int = Field(description="1, 2, ... per name, in order of registration.")
    sha256: str = Field(description="Hash of the adapter's files (names and contents).")
    pool: str = Field(description="Engine pool it was validated for.")
    base_model: str = Field(description="The pool's base model.")
    rank: int = Field(description="LoRA rank (the largest, when modules differ).")
    alpha: float = Field(description="LoRA alpha.")
    target_modules: list[str] = Field(description="Base model modules the adapter changes.")
    size_bytes: int
    created_by: str | None = Field(description="Id of the key that registered it, or 'cli'.")
    created_at: datetime
    data_snapshot_id: str | None
    changelog: str
    loaded_on: list[str] = Field(
        default_factory=list,
        description="Replicas serving this version, as of the last reconcile pass.",
    )

    @classmethod
    def of(
        cls, record: AdapterVersionRecord, loaded_on: list[str] | None = None
    ) -> AdapterVersionOut:
        fields = {name: getattr(record, name) for name in cls.model_fields if name != "loaded_on"}
        return cls(**fields, loaded_on=loaded_on or [])


class RegisteredAdapterOut(AdapterVersionOut):
    created: bool = Field(
        description="False when the same content was registered under this name before: "
        "that version is returned unchanged."
    )


class AdapterListOut(BaseModel):
    object: str = "list"
    data: list[AdapterVersionOut]


@router.post(
    "",
    status_code=201,
    summary="Register an adapter version",
    description=(
        "Validates the directory (location, files, safetensors weights, LoRA config read by "
        "peft in a worker process, rank, target modules and base model against the pool), "
        "stores it by content and records it as the next version `name@N`. The same content "
        "registered again under the same name returns the existing version with 200. A "
        "refused adapter leaves nothing behind."
    ),
    response_model=RegisteredAdapterOut,
    responses={
        **ERRORS,
        200: {"description": "The same content is registered already: that version."},
        409: {"description": "Same content registered for another pool, or a version race."},
        422: {"description": "The adapter itself is refused; `code` says why."},
        503: {"description": "The inspection worker failed or timed out."},
    },
)
async def register(
    body: RegisterAdapterIn, request: Request, response: Response, principal: SreKey
) -> RegisteredAdapterOut:
    registration = await registry(request).register(
        RegistrationRequest(
            name=body.name,
            path=body.path,
            pool=body.pool,
            data_snapshot_id=body.data_snapshot_id,
            changelog=body.changelog,
            created_by=principal.key_id,
            audit=api_actor(principal, request),
        )
    )
    if not registration.created:
        response.status_code = 200
    out = AdapterVersionOut.of(registration.version).model_dump()
    return RegisteredAdapterOut(**out, created=registration.created)


@router.get(
    "",
    summary="List adapter versions",
    description="All versions, by name then version; `name` keeps one adapter's versions.",
    response_model=AdapterListOut,
    responses=ERRORS,
)
async def list_versions(
    request: Request,
    _: SreKey,
    name: Annotated[str | None, Query(description="Only this adapter's versions.")] = None,
) -> AdapterListOut:
    records = await registry(request).list_versions(name)
    return AdapterListOut(
        data=[AdapterVersionOut.of(r, loaded_on(engines_of(request), r.id)) for r in records]
    )


@router.get(
    "/{version_id}",
    summary="One adapter version",
    response_model=AdapterVersionOut,
    responses={**ERRORS, 404: {"description": "No such version."}},
)
async def get_version(version_id: str, request: Request, _: SreKey) -> AdapterVersionOut:
    record = await registry(request).get_version(version_id)
    return AdapterVersionOut.of(record, loaded_on(engines_of(request), record.id))


def registry(request: Request) -> Registry:
    """The adapter registry the composition root keeps on the app."""
    found: Registry = request.app.state.adapters
    return found


def engines_of(request: Request) -> EngineClient:
    found: EngineClient = parts(request).engines
    return found


def loaded_on(engines: EngineClient, version_id: str) -> list[str]:
    return [
        replica.url
        for pool in engines.pools.values()
        for replica in pool.replicas
        if version_id in replica.loaded
    ]
