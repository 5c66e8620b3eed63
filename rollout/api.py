"""Rollouts for SREs: start one, watch it, pause, resume, promote, abort or retry it.

Also an analysis endpoint shaped for Argo Rollouts' web metric provider: it judges the current
step's window now and answers ``{"verdict": "pass" | "fail" | "inconclusive", ...}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field, ValidationError

from rollout.control import Analysis, RolloutControl
from rollout.core.figures import ArmFigures
from rollout.core.gates import GateResult, overall
from rollout.core.machine import Command, traffic
from rollout.core.spec import RolloutSpec
from rollout.store import SavedFigures, StoredEvent, StoredRollout
from service.api.deps import SRE_ROLES, require_roles
from service.audit.actor import api_actor
from service.auth import Principal
from service.errors import InvalidRolloutSpec


def control_of(request: Request) -> RolloutControl:
    """The rollout control the composition root keeps on the app."""
    found: RolloutControl = request.app.state.rollouts
    return found


router = APIRouter(prefix="/v1/admin/rollouts", tags=["rollouts"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid rollout spec."},
    404: {"description": "No such route, rollout or adapter version."},
    409: {"description": "The command does not fit the rollout's phase, or the route is busy."},
}


class IntervalOut(BaseModel):
    low: float | None = Field(description="Lower bound; `null` where none is known yet.")
    high: float | None = Field(description="Upper bound; `null` where the sample leaves it open.")

    @classmethod
    def of(cls, low: float | None, high: float | None) -> IntervalOut | None:
        return None if low is None and high is None else cls(low=low, high=high)


class ArmOut(BaseModel):
    samples: int
    error_rate: float | None
    latency_p95_ms: float | None
    latency_p95_interval_ms: IntervalOut | None = Field(
        default=None,
        description="The p95's confidence-sequence bounds at the latency gate's level.",
    )
    schema_valid_rate: float | None
    escalation_rate: float | None
    confidence_mean: float | None
    agreement_by_field: dict[str, float] = Field(
        description="Shadow arm: per JSON field, the share of answers equal to stable's "
        '(`""` is the whole answer, for answers that are not JSON objects).'
    )
    output_fields: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="With the `output_drift` gate: per categorical answer field, answers per "
        "value.",
    )

    @classmethod
    def of(cls, arm: ArmFigures) -> ArmOut:
        return cls(
            samples=arm.samples,
            error_rate=arm.errors.value,
            latency_p95_ms=arm.latency_p95_ms,
            latency_p95_interval_ms=IntervalOut.of(arm.latency_p95_low_ms, arm.latency_p95_high_ms),
            schema_valid_rate=arm.schema_valid.value,
            escalation_rate=arm.escalated.value,
            confidence_mean=arm.confidence_mean,
            agreement_by_field={
                name: rate.value
                for name, rate in arm.agreement_fields.items()
                if rate.value is not None
            },
            output_fields={name: dict(counts) for name, counts in arm.output_fields.items()},
        )


class FiguresOut(BaseModel):
    analysed_at: datetime = Field(description="When the controller last analysed the rollout.")
    window_start: datetime = Field(description="Start of the window that analysis read.")
    stable: ArmOut
    candidate: ArmOut

    @classmethod
    def of(cls, saved: SavedFigures) -> FiguresOut:
        return cls(
            analysed_at=saved.analysed_at, window_start=saved.window_start,
            stable=ArmOut.of(saved.stable), candidate=ArmOut.of(saved.candidate),
        )  # fmt: skip


class SamplesOut(BaseModel):
    candidate: int
    stable: int = Field(description="0 for gates that judge the candidate alone (agreement).")


class GateOut(BaseModel):
    gate: str
    verdict: str = Field(
        description="`pass` (the interval lies within the limit), `fail` (wholly beyond it) or "
        "`inconclusive` (undecided: it straddles the limit, or too few samples yet)."
    )
    candidate: float | None = Field(description="The candidate's point estimate.")
    stable: float | None = Field(description="Stable's point estimate.")
    limit: float
    detail: str = Field(description="The decision in a sentence (the same as `sentence`).")
    sentence: str = Field(
        default="", description="The figures, their intervals and the decision, in words."
    )
    interval: IntervalOut | None = Field(
        default=None,
        description="The confidence sequence's interval of the judged quantity (candidate minus "
        "stable for rates, stable minus candidate for drops, the p95 ratio, the agreement, the "
        "distance); `null` until judged.",
    )
    candidate_interval: IntervalOut | None = None
    stable_interval: IntervalOut | None = None
    samples: SamplesOut = Field(
        default_factory=lambda: SamplesOut(candidate=0, stable=0),
        description="The samples each arm's interval is taken over.",
    )
    alpha: float | None = Field(
        default=None, description="This gate's share of the rollout's alpha at this step."
    )

    @classmethod
    def of(cls, r: GateResult) -> GateOut:
        return cls(
            gate=r.gate.value, verdict=r.verdict.value, candidate=r.candidate,
            stable=r.stable, limit=r.limit, detail=r.detail, sentence=r.detail,
            interval=IntervalOut.of(r.low, r.high),
            candidate_interval=IntervalOut.of(r.candidate_low, r.candidate_high),
            stable_interval=IntervalOut.of(r.stable_low, r.stable_high),
            samples=SamplesOut(candidate=r.candidate_samples, stable=r.stable_samples),
            alpha=r.alpha,
        )  # fmt: skip


class EventOut(BaseModel):
    at: datetime
    kind: str
    from_phase: str
    to_phase: str
    step: int = Field(description="0-based index of the step after the event.")
    actor: str
    reason: str

    @classmethod
    def of(cls, event: StoredEvent) -> EventOut:
        return cls(
            at=event.at, kind=event.kind, from_phase=event.from_phase.value,
            to_phase=event.to_phase.value, step=event.step, actor=event.actor, reason=event.reason,
        )  # fmt: skip


class AnalysisOut(BaseModel):
    rollout_id: str
    route: str
    phase: str
    verdict: str = Field(
        description="`fail` if any gate fails, else `inconclusive` if any is, else `pass`."
    )
    window_start: datetime
    stable: ArmOut
    candidate: ArmOut
    gates: list[GateOut]

    @classmethod
    def of(cls, analysis: Analysis) -> AnalysisOut:
        r = analysis.rollout
        return cls(
            rollout_id=r.id, route=r.route, phase=r.state.phase.value,
            verdict=overall(analysis.verdicts).value, window_start=analysis.since,
            stable=ArmOut.of(analysis.window.stable),
            candidate=ArmOut.of(analysis.window.candidate),
            gates=[GateOut.of(v) for v in analysis.verdicts],
        )  # fmt: skip


class RolloutOut(BaseModel):
    id: str
    route: str
    stable: str
    candidate: str
    phase: str = Field(
        description="pending, evaluating (the offline evaluation on the route's pack, before "
        "any live request), shadow, canary, paused, promoted, rolled_back or aborted."
    )
    paused_phase: str | None
    evaluation_run: str | None = Field(
        default=None,
        description="The evaluate step's run (GET /v1/admin/eval/runs/{id}), once started; none "
        "when the route has no evaluation pack or the spec turned the step off.",
    )
    step: int = Field(description="0-based index into spec.steps.")
    steps: int
    canary_weight: int = Field(description="Percent of subjects the candidate serves now.")
    shadow_percent: int = Field(description="Percent of requests copied to the candidate now.")
    failures: int
    inconclusive: int
    step_started_at: datetime
    version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    spec: RolloutSpec
    last_verdicts: list[GateOut] = Field(description="The gates' verdicts at the last analysis.")
    last_figures: FiguresOut | None = Field(
        default=None,
        description="The per-arm figures those verdicts were judged on; kept after the rollout "
        "ends (promoted, rolled back or aborted).",
    )
    analysis: AnalysisOut | None = Field(
        default=None, description="The current step judged now (status only, while active)."
    )
    events: list[EventOut] = Field(default_factory=list)

    @classmethod
    def of(
        cls,
        r: StoredRollout,
        events: list[StoredEvent] | None = None,
        analysis: Analysis | None = None,
    ) -> RolloutOut:
        now = traffic(r.state, r.spec)
        return cls(
            id=r.id, route=r.route, stable=r.stable, candidate=r.candidate,
            phase=r.state.phase.value,
            paused_phase=r.state.paused_phase.value if r.state.paused_phase else None,
            evaluation_run=r.state.evaluation_run, step=r.state.step, steps=len(r.spec.steps),
            canary_weight=now.canary_weight,
            shadow_percent=now.shadow_percent, failures=r.state.failures,
            inconclusive=r.state.inconclusive, step_started_at=r.state.step_started_at,
            version=r.version, created_by=r.created_by, created_at=r.created_at,
            updated_at=r.updated_at, spec=r.spec,
            last_verdicts=[GateOut.of(v) for v in r.verdicts],
            last_figures=FiguresOut.of(r.figures) if r.figures is not None else None,
            analysis=AnalysisOut.of(analysis) if analysis is not None else None,
            events=[EventOut.of(e) for e in events or []],
        )  # fmt: skip


class CommandIn(BaseModel):
    reason: str = Field(default="", max_length=2000, description="Why; kept in the event history.")


def actor_of(principal: Principal) -> str:
    return f"{principal.name} ({principal.key_id})"[-64:]


def parse_spec(route: str, body: dict[str, Any]) -> RolloutSpec:
    try:
        return RolloutSpec.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidRolloutSpec(f"Invalid rollout spec for route '{route}': {problems}.") from exc


@router.post(
    "/{route}",
    summary="Start a rollout",
    description=(
        "Loads the candidate on every replica (each must generate with it), then starts at "
        "the first step (by default: shadow all traffic, then canary 5 %, 25 %, 50 %, then "
        "promote). "
        "Starting the same spec again returns the active rollout; a different one gets 409."
    ),
    response_model=RolloutOut,
    responses=ERRORS,
)
async def start(
    route: str,
    request: Request,
    principal: SreKey,
    body: Annotated[dict[str, Any], Body(examples=[{"candidate": "ticket-triage@4"}])],
) -> RolloutOut:
    spec = parse_spec(route, body)
    rollout = await control_of(request).start(
        route, spec, actor_of(principal), principal.key_id, api_actor(principal, request)
    )
    return RolloutOut.of(rollout)


@router.get(
    "/{route}",
    summary="Status of the route's latest rollout",
    description="Phase, step, weights, per-arm figures, each gate's verdict with its "
    "confidence-sequence interval, samples and sentence, and the events.",
    response_model=RolloutOut,
    responses=ERRORS,
)
async def status(route: str, request: Request, _: SreKey) -> RolloutOut:
    control = control_of(request)
    rollout, events = await control.latest(route)
    analysis = await control.analyse(rollout) if rollout.state.active else None
    return RolloutOut.of(rollout, events, analysis)


@router.get(
    "/{route}/analysis",
    summary="Gate verdicts now (Argo Rollouts web metric)",
    description=(
        "Judges the current step's window now without changing anything (each gate with its "
        "interval; the intervals hold at every analysis, so polling often is safe). For Argo "
        "Rollouts' "
        '`web` metric provider: `jsonPath: "{$.verdict}"`, `successCondition: '
        'result == "pass"`, `failureCondition: result == "fail"`.'
    ),
    response_model=AnalysisOut,
    responses=ERRORS,
)
async def analysis(route: str, request: Request, _: SreKey) -> AnalysisOut:
    control = control_of(request)
    rollout, _events = await control.latest(route)
    return AnalysisOut.of(await control.analyse(rollout))


def _command_endpoint(cmd: Command, summary: str, description: str) -> None:
    async def endpoint(
        route: str, request: Request, principal: SreKey, body: CommandIn | None = None
    ) -> RolloutOut:
        reason = (
            body.reason if body is not None and body.reason else f"{cmd.value} by {principal.name}"
        )
        rollout = await control_of(request).command(
            route, cmd, actor_of(principal), reason, api_actor(principal, request)
        )
        return RolloutOut.of(rollout)

    router.add_api_route(
        f"/{{route}}/{cmd.value}", endpoint, methods=["POST"], summary=summary,
        description=description + " Idempotent; 409 where the phase does not allow it.",
        response_model=RolloutOut, responses=ERRORS,
    )  # fmt: skip


_command_endpoint(Command.PAUSE, "Pause a rollout", "Keeps the current weights; analysis stops.")
_command_endpoint(Command.RESUME, "Resume a paused rollout", "The step's window starts again.")
_command_endpoint(
    Command.PROMOTE, "Promote the candidate now",
    "Skips the remaining steps: the candidate becomes the route's stable target.",
)  # fmt: skip
_command_endpoint(
    Command.ABORT, "Abort a rollout",
    "All traffic goes back to stable at once (every replica within one snapshot refresh).",
)  # fmt: skip
_command_endpoint(
    Command.RETRY, "Retry a rolled back or aborted rollout", "Starts again from the first step."
)
