"""Per-arm figures over an analysis window, computed from request samples. Pure."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rollout.core.sequential import order_statistic, quantile_ranks
from rollout.core.split import Arm

CLIENT_CLOSED = 499
# The latency gate judges this quantile of successful requests' latency.
LATENCY_QUANTILE = 0.95


@dataclass(frozen=True, slots=True)
class Sample:
    """What the gates need of one request record."""

    arm: Arm
    status_code: int
    latency_ms: float
    schema_valid: bool | None = None
    escalated: bool | None = None
    confidence: float | None = None
    # Shadow samples: did each top-level JSON field (or, for "", the whole answer) equal stable's?
    agreement: Mapping[str, bool] | None = None
    # The answer's binned field values (categories as strings), as its record keeps them.
    fields: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Rate:
    hits: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None


@dataclass(frozen=True, slots=True)
class ArmFigures:
    samples: int = 0
    errors: Rate = field(default_factory=Rate)
    latency_p95_ms: float | None = None
    # The p95's confidence-sequence bounds at the latency gate's level (``latency_bounds``):
    # ``None`` where the sample cannot bound that side yet.
    latency_p95_low_ms: float | None = None
    latency_p95_high_ms: float | None = None
    timed: int = 0  # successful requests, the latencies the p95 is taken over
    schema_valid: Rate = field(default_factory=Rate)
    escalated: Rate = field(default_factory=Rate)
    confidence_mean: float | None = None
    confidence_n: int = 0
    agreement_fields: Mapping[str, Rate] = field(default_factory=dict)
    # Per categorical answer field: how many answers had each value (the output_drift gate).
    output_fields: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Window:
    """Stable and candidate (canary or shadow, whichever the step has) over the same window."""

    stable: ArmFigures
    candidate: ArmFigures
    # Per shadow sample: its agreement marks, for the agreement gate's chosen fields.
    agreements: tuple[Mapping[str, bool], ...] = ()


def p95_index(count: int) -> int:
    """The 0-based rank of the 95th percentile among ``count`` sorted values (nearest rank)."""
    return max(0, math.ceil(0.95 * count) - 1)


def p95(values: Sequence[float]) -> float | None:
    return sorted(values)[p95_index(len(values))] if values else None


def latency_bounds(
    sorted_ms: Sequence[float], alpha: float | None
) -> tuple[float | None, float | None]:
    """The order statistics that bracket the p95 at level ``alpha`` (none without a level)."""
    if alpha is None or not sorted_ms:
        return None, None
    low, high = quantile_ranks(len(sorted_ms), LATENCY_QUANTILE, alpha)
    values = list(sorted_ms)
    return order_statistic(values, low), order_statistic(values, high)


def agreement_rates(marks: Iterable[Mapping[str, bool]]) -> dict[str, Rate]:
    """Per field, how many of the compared answers agreed."""
    fields: dict[str, list[bool]] = {}
    for mark in marks:
        for name, same in mark.items():
            fields.setdefault(name, []).append(same)
    return {n: Rate(sum(v), len(v)) for n, v in sorted(fields.items())}


def value_counts(
    answers: Iterable[Mapping[str, object] | None], names: Collection[str] | None = None
) -> dict[str, dict[str, int]]:
    """Per field (of ``names``, else every field): how many answers had each value. Categories
    are kept as strings; other values are not counted."""
    counts: dict[str, dict[str, int]] = {}
    for answer in answers:
        for name, value in (answer or {}).items():
            if isinstance(value, str) and (names is None or name in names):
                values = counts.setdefault(name, {})
                values[value] = values.get(value, 0) + 1
    return counts


def _rate(flags: Iterable[bool | None]) -> Rate:
    known = [f for f in flags if f is not None]
    return Rate(sum(known), len(known))


def arm_figures(
    samples: Sequence[Sample],
    output_fields: Collection[str] | None = None,
    latency_alpha: float | None = None,
) -> ArmFigures:
    """The arm's figures over every sample given (the whole step so far: a confidence sequence
    runs over the whole sample path, never a sliding window). ``latency_alpha`` is the level of
    each arm's p95 bounds."""
    # A client that hung up says nothing about the version that served it.
    served = [s for s in samples if s.status_code != CLIENT_CLOSED]
    ok_latency = sorted(s.latency_ms for s in served if s.status_code < 400)
    confidences = [s.confidence for s in served if s.confidence is not None]
    low, high = latency_bounds(ok_latency, latency_alpha)
    return ArmFigures(
        samples=len(served),
        errors=Rate(sum(s.status_code >= 500 for s in served), len(served)),
        latency_p95_ms=p95(ok_latency),
        latency_p95_low_ms=low,
        latency_p95_high_ms=high,
        timed=len(ok_latency),
        schema_valid=_rate(s.schema_valid for s in served),
        escalated=_rate(s.escalated for s in served),
        confidence_mean=sum(confidences) / len(confidences) if confidences else None,
        confidence_n=len(confidences),
        agreement_fields=agreement_rates(
            s.agreement for s in served if s.agreement and s.status_code < 400
        ),
        output_fields=value_counts(
            (s.fields for s in served if s.status_code < 400), output_fields
        ),
    )


def window(
    samples: Iterable[Sample],
    candidate_arm: Arm,
    output_fields: Collection[str] | None = None,
    latency_alpha: float | None = None,
) -> Window:
    stable = [s for s in samples if s.arm is Arm.STABLE]
    candidate = [s for s in samples if s.arm is candidate_arm]
    return Window(
        arm_figures(stable, output_fields, latency_alpha),
        arm_figures(candidate, output_fields, latency_alpha),
        tuple(s.agreement for s in candidate if s.agreement is not None and s.status_code < 400),
    )
