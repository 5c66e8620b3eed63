"""Evaluation runs for SREs: start one (answered in the background), list, read its figures."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import SRE_ROLES, require_roles, store_parts
from service.audit.actor import api_actor
from service.auth import Principal
from service.evaluation.errors import RunInvalid
from service.evaluation.executor import RunExecutor, RunRequest
from service.evaluation.runs import RunInfo, get_run, list_runs
from service.evaluation.service import run_page

router = APIRouter(prefix="/v1/admin/eval", tags=["evaluation"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is not sre or admin."},
}


def _executor(request: Request) -> RunExecutor:
    found: RunExecutor = request.app.state.evaluations
    return found


class StartRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200, description="The route whose pack is run.")
    pack: str = Field(
        min_length=3, max_length=100, description="The route's pack version, `name@N`."
    )
    candidate: str = Field(
        min_length=1, max_length=300, description="The adapter version evaluated, `NAME@N`."
    )
    baseline: str | None = Field(
        default="stable",
        max_length=300,
        description="What the candidate is compared with, case by case: `stable` (the route's "
        "version now), `base` (the pool's base model), another version `NAME@M`, or null for "
        "no comparison.",
    )
    concurrency: int = Field(
        default=2,
        ge=1,
        description="Calls in flight at once (at most the gateway's eval_max_concurrency).",
    )


class RunOut(BaseModel):
    id: str
    route: str
    pack: str = Field(description="`route/name@N`.")
    pool: str
    candidate: str
    baseline_ref: str | None = Field(description="The baseline as asked (`stable`, `base`...).")
    baseline: str | None = Field(description="What it named when the run started.")
    concurrency: int
    status: str = Field(description="`running`, `done`, `failed` or `interrupted`.")
    reason: str | None = Field(description="Why it failed or was interrupted.")
    created_at: datetime
    finished_at: datetime | None
    started_by: str | None
    figures: dict[str, Any] | None = Field(
        description="Once done: per arm (`candidate`, `baseline`) the pass rate, schema-valid "
        "and escalated shares, pass rate per kind and per slice, per field exact match and, "
        "for categorical fields, precision, recall, F1 and the confusion matrix (every rate "
        "with its 95 % Wilson interval), latency and tokens; and `comparison`: paired on the "
        "same cases (McNemar's exact test), overall and per field, `better`, `worse` or `no "
        "detectable difference`."
    )

    @classmethod
    def of(cls, run: RunInfo) -> RunOut:
        return cls(
            id=run.id, route=run.route, pack=run.pack_id, pool=run.pool, candidate=run.candidate,
            baseline_ref=run.baseline_ref, baseline=run.baseline, concurrency=run.concurrency,
            status=run.status, reason=run.reason, created_at=run.created_at,
            finished_at=run.finished_at, started_by=run.started_by, figures=run.figures,
        )  # fmt: skip


class RunListOut(BaseModel):
    object: str = "list"
    data: list[RunOut]


@router.post(
    "/runs",
    status_code=202,
    summary="Start an evaluation run",
    description="Places the candidate (and an adapter baseline) on the route's pool, sends every "
    "case of the pack to each under the route's contract (schema, confidence) at temperature "
    "0 and bounded concurrency, and stores an immutable run. Answers at once with the run "
    "`running`; read it again until `done`. Evaluation calls are not traffic: no request "
    "records, no key limits, no gates.",
    response_model=RunOut,
    responses={
        **ERRORS,
        400: {"description": "No such route, pack or version, or a baseline that cannot be."},
        429: {"description": "This gateway already runs as many evaluations as it may."},
    },
)
async def start(body: StartRunIn, request: Request, principal: SreKey) -> RunOut:
    cap = store_parts(request).settings.eval_max_concurrency
    if body.concurrency > cap:
        raise RunInvalid(f"concurrency is at most {cap} (eval_max_concurrency)")
    run = await _executor(request).start(
        RunRequest(
            route=body.route, pack=body.pack, candidate=body.candidate, baseline=body.baseline,
            concurrency=body.concurrency, started_by=principal.key_id,
            audit=api_actor(principal, request),
        )
    )  # fmt: skip
    return RunOut.of(run)


@router.get(
    "/runs",
    summary="List evaluation runs",
    description="The newest first (at most 100).",
    response_model=RunListOut,
    responses=ERRORS,
)
async def runs(
    request: Request,
    _: SreKey,
    route: Annotated[str | None, Query(description="Only this route's runs.")] = None,
) -> RunListOut:
    async with store_parts(request).sessions() as session:
        found = await list_runs(session, route)
    return RunListOut(data=[RunOut.of(run) for run in found])


@router.get(
    "/runs/{run_id}",
    summary="One evaluation run",
    response_model=RunOut,
    responses={**ERRORS, 404: {"description": "No such run."}},
)
async def run(run_id: str, request: Request, _: SreKey) -> RunOut:
    async with store_parts(request).sessions() as session:
        return RunOut.of(await get_run(session, run_id))


@router.get(
    "/runs/{run_id}/report",
    summary="One evaluation run as an HTML page",
    description="Self-contained (nothing loaded from elsewhere): each arm's rates with their "
    "95 % intervals, the paired verdict, confusion matrices, per-slice rates, and every case the "
    "candidate failed beside the expected answer and the baseline's.",
    response_class=HTMLResponse,
    responses={**ERRORS, 404: {"description": "No such run."}},
)
async def run_report(run_id: str, request: Request, _: SreKey) -> HTMLResponse:
    async with store_parts(request).sessions() as session:
        return HTMLResponse(await run_page(session, run_id))
