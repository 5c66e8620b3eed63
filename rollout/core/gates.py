"""Each gate's verdict on one analysis window. Pure.

Too few samples, or no data for a gate's figure, is ``inconclusive``: never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rollout.core.agreement import score
from rollout.core.figures import ArmFigures, Rate, Window
from rollout.core.spec import GateName, RolloutSpec, Step, StepKind
from service.drift.statistics import category_bins, js_distance

# Rates are differences of fractions: 1.0 - 0.98 is 0.020000000000000018, and a limit is "at most".
EPSILON = 1e-9


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: GateName
    verdict: Verdict
    candidate: float | None
    stable: float | None
    limit: float
    detail: str


def overall(results: tuple[GateResult, ...]) -> Verdict:
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts or not results:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def applies(gate: GateName, step: Step) -> bool:
    return gate is not GateName.AGREEMENT or step.kind is StepKind.SHADOW


def judge(spec: RolloutSpec, step: Step, window: Window) -> tuple[GateResult, ...]:
    return tuple(_judge(gate, spec, step, window) for gate in spec.gates if applies(gate, step))


def _judge(gate: GateName, spec: RolloutSpec, step: Step, w: Window) -> GateResult:
    t = spec.thresholds
    need = step.min_samples
    few = _too_few(gate, w, need)
    if gate is GateName.ERROR_RATE:
        return _higher_is_worse(
            gate, w.candidate.errors, w.stable.errors, t.max_error_rate_increase, few
        )
    if gate is GateName.ESCALATION_RATE:
        return _higher_is_worse(
            gate, w.candidate.escalated, w.stable.escalated, t.max_escalation_rate_increase,
            few or _few_judged(w.candidate.escalated.total, w.stable.escalated.total, need),
        )  # fmt: skip
    if gate is GateName.SCHEMA_VALID_RATE:
        c, s = w.candidate.schema_valid, w.stable.schema_valid
        few = few or _few_judged(c.total, s.total, need)
        return _lower_is_worse(gate, c.value, s.value, t.max_schema_valid_drop, few)
    if gate is GateName.MEAN_CONFIDENCE:
        c_arm, s_arm = w.candidate, w.stable
        few = few or _few_judged(c_arm.confidence_n, s_arm.confidence_n, need)
        return _lower_is_worse(
            gate, c_arm.confidence_mean, s_arm.confidence_mean, t.max_confidence_drop, few
        )
    if gate is GateName.LATENCY_P95_RATIO:
        return _latency(w.candidate, w.stable, t.max_latency_p95_ratio, few)
    if gate is GateName.OUTPUT_DRIFT:
        return _output_drift(w, t.max_output_drift, need)
    return _agreement(spec, w, need)


def _too_few(gate: GateName, w: Window, need: int) -> str:
    if gate in (GateName.AGREEMENT, GateName.OUTPUT_DRIFT):
        return ""
    if w.candidate.samples < need or w.stable.samples < need:
        return (
            f"{w.candidate.samples} candidate and {w.stable.samples} stable samples, {need} needed"
        )
    return ""


def _few_judged(candidate_n: int, stable_n: int, need: int) -> str:
    if min(candidate_n, stable_n) < need:
        return (
            f"figure known for {candidate_n} candidate and {stable_n} stable answers, {need} needed"
        )
    return ""


def _inconclusive(
    gate: GateName, c: float | None, s: float | None, limit: float, why: str
) -> GateResult:
    return GateResult(gate, Verdict.INCONCLUSIVE, c, s, limit, why)


def _higher_is_worse(gate: GateName, c: Rate, s: Rate, limit: float, few: str) -> GateResult:
    cv, sv = c.value, s.value
    if few or cv is None or sv is None:
        return _inconclusive(gate, cv, sv, limit, few or "no data")
    verdict = Verdict.PASS if cv - sv <= limit + EPSILON else Verdict.FAIL
    return GateResult(gate, verdict, cv, sv, limit, f"{cv:.3f} vs {sv:.3f} (at most +{limit})")


def _lower_is_worse(
    gate: GateName, cv: float | None, sv: float | None, limit: float, few: str
) -> GateResult:
    if few or cv is None or sv is None:
        return _inconclusive(gate, cv, sv, limit, few or "no data")
    verdict = Verdict.PASS if sv - cv <= limit + EPSILON else Verdict.FAIL
    return GateResult(gate, verdict, cv, sv, limit, f"{cv:.3f} vs {sv:.3f} (at most -{limit})")


def _latency(c: ArmFigures, s: ArmFigures, limit: float, few: str) -> GateResult:
    gate = GateName.LATENCY_P95_RATIO
    cv, sv = c.latency_p95_ms, s.latency_p95_ms
    if few or cv is None or sv is None or sv <= 0:
        return _inconclusive(gate, cv, sv, limit, few or "no successful requests to time")
    ratio = cv / sv
    verdict = Verdict.PASS if ratio <= limit else Verdict.FAIL
    return GateResult(
        gate,
        verdict,
        cv,
        sv,
        limit,
        f"p95 {cv:.0f} ms vs {sv:.0f} ms: x{ratio:.2f} (at most x{limit})",
    )


def _agreement(spec: RolloutSpec, w: Window, need: int) -> GateResult:
    gate, limit = GateName.AGREEMENT, spec.thresholds.min_agreement
    scores = [
        v
        for marks in w.agreements
        if (v := score(marks, spec.thresholds.agreement_fields)) is not None
    ]
    if len(scores) < need:
        return _inconclusive(
            gate, None, None, limit, f"{len(scores)} compared answers, {need} needed"
        )
    mean = sum(scores) / len(scores)
    verdict = Verdict.PASS if mean >= limit else Verdict.FAIL
    return GateResult(
        gate, verdict, mean, None, limit, f"{mean:.3f} of compared fields agree (at least {limit})"
    )


def _output_drift(w: Window, limit: float, need: int) -> GateResult:
    """The worst Jensen-Shannon distance between the candidate's and stable's values of a
    categorical answer field, over the fields both arms answered ``need`` times."""
    gate = GateName.OUTPUT_DRIFT
    distances: dict[str, float] = {}
    for name in sorted(set(w.candidate.output_fields) | set(w.stable.output_fields)):
        cand = w.candidate.output_fields.get(name, {})
        stable = w.stable.output_fields.get(name, {})
        if min(sum(cand.values()), sum(stable.values())) < need:
            continue
        _, stable_counts, cand_counts = category_bins(stable, cand)
        distances[name] = js_distance(stable_counts, cand_counts)
    if not distances:
        return _inconclusive(
            gate, None, None, limit, f"no answer field with {need} values on both arms"
        )
    name, worst = max(distances.items(), key=lambda item: item[1])
    verdict = Verdict.PASS if worst <= limit + EPSILON else Verdict.FAIL
    return GateResult(
        gate, verdict, worst, None, limit,
        f"{name}: Jensen-Shannon distance {worst:.3f} from stable (at most {limit})",
    )  # fmt: skip
