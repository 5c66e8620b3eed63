"""Each gate's verdict on the current step's cumulative window. Pure.

Every gate judges candidate against stable with a confidence sequence (``sequential``) at its
share of the rollout's ``alpha``: ``alpha`` is split evenly over every (gate, step) pair the spec
judges, and a two-arm gate splits its share again between the arms, so with probability at least
``1 - alpha`` no gate of the rollout, at any step or any analysis, passes a version that is
beyond its limit or fails one that is within it. Too few samples (a step's ``min_samples``),
or no data for a gate's figure, is ``inconclusive``: never a pass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from rollout.core import wording
from rollout.core.agreement import score
from rollout.core.drift_gate import output_drift
from rollout.core.figures import ArmFigures, Rate, Window
from rollout.core.sequential import Interval, difference, mean_interval, split
from rollout.core.spec import GateName, RolloutSpec, Step, StepKind
from rollout.core.verdicts import GateResult, Verdict, at_least, at_most, overall

__all__ = ["GateResult", "Verdict", "applies", "gate_alpha", "judge", "latency_alpha", "overall"]


def applies(gate: GateName, step: Step) -> bool:
    return gate is not GateName.AGREEMENT or step.kind is StepKind.SHADOW


def gate_alpha(spec: RolloutSpec) -> float:
    """Each (gate, step) pair's share of the rollout's ``alpha``."""
    pairs = sum(applies(gate, step) for step in spec.steps for gate in spec.gates)
    return split(spec.alpha, pairs)


def latency_alpha(spec: RolloutSpec) -> float:
    """The level of each arm's p95 bounds: half the latency gate's share."""
    return gate_alpha(spec) / 2


def judge(spec: RolloutSpec, step: Step, window: Window) -> tuple[GateResult, ...]:
    alpha = gate_alpha(spec)
    return tuple(
        _judge(gate, spec, step, window, alpha) for gate in spec.gates if applies(gate, step)
    )


def _judge(gate: GateName, spec: RolloutSpec, step: Step, w: Window, alpha: float) -> GateResult:
    t = spec.thresholds
    need = step.min_samples
    few = _too_few(w, need) if gate not in (GateName.AGREEMENT, GateName.OUTPUT_DRIFT) else ""
    c, s = w.candidate, w.stable
    if gate is GateName.ERROR_RATE:
        return rate_gate(
            gate, tally(c.errors), tally(s.errors), t.max_error_rate_increase, few, alpha
        )
    if gate is GateName.ESCALATION_RATE:
        few = few or _few_judged(c.escalated.total, s.escalated.total, need)
        limit = t.max_escalation_rate_increase
        return rate_gate(gate, tally(c.escalated), tally(s.escalated), limit, few, alpha)
    if gate is GateName.SCHEMA_VALID_RATE:
        few = few or _few_judged(c.schema_valid.total, s.schema_valid.total, need)
        limit = t.max_schema_valid_drop
        return rate_gate(gate, tally(c.schema_valid), tally(s.schema_valid), limit, few, alpha)
    if gate is GateName.MEAN_CONFIDENCE:
        few = few or _few_judged(c.confidence_n, s.confidence_n, need)
        return rate_gate(gate, _confidence(c), _confidence(s), t.max_confidence_drop, few, alpha)
    if gate is GateName.LATENCY_P95_RATIO:
        return latency_gate(c, s, t.max_latency_p95_ratio, few, alpha)
    if gate is GateName.OUTPUT_DRIFT:
        return output_drift(w, t.max_output_drift, need, alpha)
    return _agreement(spec, w, need, alpha)


def _too_few(w: Window, need: int) -> str:
    if w.candidate.samples < need or w.stable.samples < need:
        return wording.too_few(w.candidate.samples, w.stable.samples, need)
    return ""


def _few_judged(candidate_n: int, stable_n: int, need: int) -> str:
    if min(candidate_n, stable_n) < need:
        return wording.too_few(candidate_n, stable_n, need, "answers with this figure")
    return ""


class Tally(NamedTuple):
    """Values in [0, 1] (flags or scores): their sum and their count."""

    hits: float
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None


def tally(rate: Rate) -> Tally:
    return Tally(float(rate.hits), rate.total)


def _confidence(arm: ArmFigures) -> Tally:
    """Mean confidence as a [0, 1] mean: the sum of the scores over their count."""
    mean = arm.confidence_mean
    return Tally(0.0, 0) if mean is None else Tally(mean * arm.confidence_n, arm.confidence_n)


# Gates where a lower candidate figure is the worse one: their limit bounds stable minus candidate.
LOWER_IS_WORSE = frozenset({GateName.SCHEMA_VALID_RATE, GateName.MEAN_CONFIDENCE})


def rate_gate(
    gate: GateName, c: Tally, s: Tally, limit: float, few: str, alpha: float
) -> GateResult:
    cv, sv = c.value, s.value
    base = GateResult(
        gate, Verdict.INCONCLUSIVE, cv, sv, limit, "", candidate_samples=c.total,
        stable_samples=s.total, alpha=alpha,
    )  # fmt: skip
    if few or cv is None or sv is None:
        return _with(base, detail=few or wording.no_data(gate))
    ci = mean_interval(c.hits, c.total, alpha / 2)
    si = mean_interval(s.hits, s.total, alpha / 2)
    judged = difference(si, ci) if gate in LOWER_IS_WORSE else difference(ci, si)
    verdict = at_most(judged, limit)
    return _with(
        base, verdict=verdict, low=judged.low, high=judged.high,
        candidate_low=ci.low, candidate_high=ci.high, stable_low=si.low, stable_high=si.high,
        detail=wording.rates(gate, cv, ci, sv, si, judged, limit, verdict, c.total, s.total),
    )  # fmt: skip


def latency_gate(c: ArmFigures, s: ArmFigures, limit: float, few: str, alpha: float) -> GateResult:
    gate = GateName.LATENCY_P95_RATIO
    cv, sv = c.latency_p95_ms, s.latency_p95_ms
    base = GateResult(
        gate, Verdict.INCONCLUSIVE, cv, sv, limit, "", candidate_samples=c.timed,
        stable_samples=s.timed, alpha=alpha,
    )  # fmt: skip
    if few or cv is None or sv is None or sv <= 0:
        return _with(base, detail=few or wording.no_data(gate))
    c_low, c_high = c.latency_p95_low_ms or 0.0, c.latency_p95_high_ms
    s_low, s_high = s.latency_p95_low_ms or 0.0, s.latency_p95_high_ms
    # The ratio's interval: the candidate's bounds over the stable's opposite ones. An end the
    # sample cannot bound yet (too few requests for the 95th percentile) leaves it open.
    high = c_high / s_low if c_high is not None and s_low > 0 else float("inf")
    low = c_low / s_high if s_high is not None and s_high > 0 else 0.0
    judged = Interval(min(low, cv / sv), max(high, cv / sv))
    verdict = at_most(judged, limit)
    return _with(
        base, verdict=verdict, low=judged.low, high=judged.high if high != float("inf") else None,
        candidate_low=c_low, candidate_high=c_high, stable_low=s_low, stable_high=s_high,
        detail=wording.latency(cv, (c_low, c_high), sv, (s_low, s_high), judged, limit, verdict),
    )  # fmt: skip


def _agreement(spec: RolloutSpec, w: Window, need: int, alpha: float) -> GateResult:
    fields = spec.thresholds.agreement_fields
    scores = [v for marks in w.agreements if (v := score(marks, fields)) is not None]
    what = wording.compared(w.agreements, fields)
    return agreement_gate(
        Tally(sum(scores), len(scores)), spec.thresholds.min_agreement, need, alpha, what
    )


def agreement_gate(scores: Tally, limit: float, need: int, alpha: float, what: str) -> GateResult:
    """The mean agreement score (in [0, 1]) of the compared answers against its floor."""
    gate, n = GateName.AGREEMENT, scores.total
    if n < need or scores.value is None:
        return GateResult(
            gate, Verdict.INCONCLUSIVE, None, None, limit, wording.too_few_compared(n, need),
            candidate_samples=n, alpha=alpha,
        )  # fmt: skip
    mean = scores.value
    judged = mean_interval(scores.hits, n, alpha)
    verdict = at_least(judged, limit)
    return GateResult(
        gate, verdict, mean, None, limit,
        wording.agreement(what, mean, judged, n, limit, verdict),
        low=judged.low, high=judged.high, candidate_low=judged.low, candidate_high=judged.high,
        candidate_samples=n, alpha=alpha,
    )  # fmt: skip


def _with(base: GateResult, **changes: object) -> GateResult:
    return replace(base, **changes)  # type: ignore[arg-type]
