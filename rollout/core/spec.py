"""What an SRE asks for when starting a rollout: the steps, the gates and the limits.

Every field has a default, so ``{"candidate": "triage@4"}`` is a complete request: shadow the
candidate on all traffic, then give it 5 %, 25 % and 50 % of the subjects, each step judged by
the gates, then promote it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StepKind(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"


class GateName(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY_P95_RATIO = "latency_p95_ratio"
    AGREEMENT = "agreement"
    SCHEMA_VALID_RATE = "schema_valid_rate"
    ESCALATION_RATE = "escalation_rate"
    MEAN_CONFIDENCE = "mean_confidence"
    OUTPUT_DRIFT = "output_drift"
    # The offline evaluation before any live traffic (``RolloutSpec.evaluation``), never listed
    # under ``gates``.
    EVALUATION = "evaluation"


DEFAULT_GATES = (GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO, GateName.AGREEMENT)
LIVE_GATES = tuple(gate for gate in GateName if gate is not GateName.EVALUATION)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    kind: StepKind = Field(description="`shadow`: the candidate gets copies; `canary`: a share.")
    weight: Annotated[int, Field(ge=1, le=100)] = Field(
        description="Canary: percent of subjects served by the candidate. "
        "Shadow: percent of requests copied to the candidate."
    )
    min_duration_s: Annotated[float, Field(ge=0, le=7 * 86400)] = Field(
        default=300, description="The step lasts at least this long."
    )
    min_samples: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=100,
        description="Candidate and stable requests the step needs before its gates can decide "
        "(a floor: the gates' confidence sequences decide once it is met).",
    )


def _default_steps() -> tuple[Step, ...]:
    return (
        Step(kind=StepKind.SHADOW, weight=100),
        Step(kind=StepKind.CANARY, weight=5),
        Step(kind=StepKind.CANARY, weight=25),
        Step(kind=StepKind.CANARY, weight=50),
    )


class Thresholds(_Strict):
    """Each gate compares the candidate with stable over the same window."""

    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02, description="Candidate error rate minus stable's, at most."
    )
    max_latency_p95_ratio: Annotated[float, Field(gt=0, le=100)] = Field(
        default=1.5, description="Candidate p95 latency divided by stable's, at most."
    )
    min_agreement: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.8,
        description="Shadow only: the mean share of compared JSON fields (or whole answers, "
        "when not JSON) where the candidate's answer equals stable's, at least.",
    )
    agreement_fields: tuple[str, ...] | None = Field(
        default=None,
        description="Top-level JSON fields to compare; all of stable's fields when unset.",
        max_length=64,
    )
    max_schema_valid_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02, description="Stable's schema-valid rate minus the candidate's, at most."
    )
    max_escalation_rate_increase: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05, description="Candidate escalation rate minus stable's, at most."
    )
    max_confidence_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05, description="Stable's mean confidence minus the candidate's, at most."
    )
    max_output_drift: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.2,
        description="Per categorical answer field, the Jensen-Shannon distance (base 2) between "
        "the candidate's and stable's values over the same window, at most.",
    )
    output_drift_fields: tuple[str, ...] | None = Field(
        default=None,
        description="Top-level answer fields the output_drift gate compares; every categorical "
        "field of the route's output schema when unset.",
        max_length=16,
    )


class Evaluation(_Strict):
    """The offline evaluation a rollout starts with, when its route has a pack: the candidate
    and ``baseline`` answer every case before any live request reaches the candidate, and a
    candidate the pack shows worse than a limit allows is rolled back with 0 shadow or canary
    requests. A pack too small to tell lets it go on to the live gates."""

    enabled: bool = Field(
        default=True, description="Evaluate first when the route has a pack (false: skip it)."
    )
    pack: str | None = Field(
        default=None,
        max_length=100,
        description="The route's pack `name@N`; unset, the newest version of its newest pack.",
    )
    baseline: str = Field(
        default="stable",
        max_length=300,
        description="`stable` (the route's version now), `base`, or a version `NAME@M`.",
    )
    alpha: Annotated[float, Field(gt=0, le=0.5)] = Field(
        default=0.05,
        description="The chance that the step rolls back a candidate within every limit; split "
        "evenly over its checks.",
    )
    max_pass_rate_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02, description="Baseline's share of cases passed minus the candidate's, at most."
    )
    max_field_match_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02,
        description="Per judged answer field, baseline's exact-match rate minus the candidate's, "
        "at most.",
    )
    max_schema_valid_drop: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.02, description="Baseline's schema-valid rate minus the candidate's, at most."
    )
    max_kind_drop: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {"injection": 0.0, "refusal": 0.0},
        description="Per scenario kind, baseline's pass rate minus the candidate's, at most "
        "(kinds the pack does not hold are skipped).",
    )


class RolloutSpec(_Strict):
    candidate: str = Field(
        min_length=3, max_length=300, description="The adapter version `name@N` to roll out."
    )
    steps: tuple[Step, ...] = Field(
        default_factory=_default_steps, min_length=1, max_length=20,
        description="In order; after the last step passes, the candidate is promoted.",
    )  # fmt: skip
    gates: tuple[GateName, ...] = Field(
        default=DEFAULT_GATES,
        min_length=1,
        description="Gates judged at each analysis. `agreement` applies to shadow steps only.",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    evaluation: Evaluation = Field(
        default_factory=Evaluation,
        description="The offline evaluation on the route's pack before the first step; a "
        "candidate the paired comparison finds worse, or past a limit, is rolled back.",
    )
    alpha: Annotated[float, Field(gt=0, le=0.5)] = Field(
        default=0.05,
        description="The rollout's error rate: the chance that any gate, at any step and any "
        "analysis, fails a version within its limits or passes one beyond them. Split evenly "
        "over every (gate, step) pair; each gate judges with a confidence sequence, valid "
        "however often it is analysed.",
    )
    failure_limit: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=2,
        description="Analyses with a failed gate before the rollout is rolled back (a floor on "
        "top of the gates' confidence sequences).",
    )
    inconclusive_limit: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=90,
        description="Inconclusive analyses in a row, once a step's minimum duration has passed, "
        "before the rollout pauses for a person (90 at the 10 s tick: 15 minutes for the gates' "
        "intervals to decide).",
    )
    progress_deadline_s: Annotated[float, Field(gt=0, le=30 * 86400)] = Field(
        default=3600, description="A step that has not passed after this long is rolled back."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if "@" not in self.candidate:
            raise ValueError("'candidate' must be an adapter version 'name@N'")
        if GateName.EVALUATION in self.gates:
            raise ValueError("'evaluation' is not a live gate: configure it under 'evaluation'")
        if len(set(self.gates)) != len(self.gates):
            raise ValueError("'gates' lists a gate twice")
        canary = [s.weight for s in self.steps if s.kind is StepKind.CANARY]
        if canary != sorted(canary):
            raise ValueError("canary weights must not decrease from one step to the next")
        kinds = [s.kind for s in self.steps]
        first_canary = kinds.index(StepKind.CANARY) if StepKind.CANARY in kinds else len(kinds)
        if StepKind.SHADOW in kinds[first_canary:]:
            raise ValueError("shadow steps must come before canary steps")
        for step in self.steps:
            if step.min_duration_s >= self.progress_deadline_s:
                raise ValueError("each step's min_duration_s must be below progress_deadline_s")
        return self
