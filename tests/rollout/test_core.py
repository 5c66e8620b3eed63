"""Unit tests of the pure rollout core: spec, sticky split, agreement, gates, state machine.

No database, no clock: every ``now`` is passed in, every window is built from hand-made samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from rollout.core.agreement import WHOLE, compare, score
from rollout.core.figures import CLIENT_CLOSED, Sample, Window, arm_figures, window
from rollout.core.gates import GateResult, Verdict, judge, latency_alpha, overall
from rollout.core.machine import (
    Command,
    NotAllowed,
    Outcome,
    Phase,
    State,
    Traffic,
    command,
    tick,
    traffic,
)
from rollout.core.spec import (
    DEFAULT_GATES,
    LIVE_GATES,
    GateName,
    RolloutSpec,
    Step,
    StepKind,
    Thresholds,
)
from rollout.core.split import Arm, Split, bucket, decide

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- spec ----------------------------------------------------------------------------------------


def test_spec_defaults_are_a_complete_rollout() -> None:
    spec = RolloutSpec(candidate="t@2")
    assert [(s.kind, s.weight) for s in spec.steps] == [
        (StepKind.SHADOW, 100),
        (StepKind.CANARY, 5),
        (StepKind.CANARY, 25),
        (StepKind.CANARY, 50),
    ]
    assert all(s.min_duration_s == 300 and s.min_samples == 100 for s in spec.steps)
    assert spec.gates == (GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO, GateName.AGREEMENT)
    assert spec.gates == DEFAULT_GATES
    assert spec.thresholds == Thresholds()
    assert spec.thresholds.agreement_fields is None
    assert (spec.failure_limit, spec.inconclusive_limit, spec.progress_deadline_s) == (2, 90, 3600)
    assert spec.alpha == 0.05
    # The smallest request an SRE can send, and a round trip through JSON.
    assert RolloutSpec.model_validate({"candidate": "t@2"}) == spec
    assert RolloutSpec.model_validate_json(spec.model_dump_json()) == spec


def test_spec_is_frozen() -> None:
    spec = RolloutSpec(candidate="t@2")
    with pytest.raises(ValidationError):
        spec.failure_limit = 5


def _canary(weight: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "canary", "weight": weight, **extra}


def _shadow(weight: int = 100, **extra: Any) -> dict[str, Any]:
    return {"kind": "shadow", "weight": weight, **extra}


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"steps": [_canary(0)]}, "weight 0"),
        ({"steps": [_canary(101)]}, "weight 101"),
        ({"steps": [_shadow(0)]}, "shadow weight 0"),
        ({"steps": [_canary(25), _canary(5)]}, "decreasing canary weights"),
        ({"steps": [_canary(5), _canary(50), _canary(25)]}, "decreasing later on"),
        ({"steps": [_canary(5), _shadow()]}, "shadow after canary"),
        ({"steps": [_shadow(), _canary(5), _shadow(), _canary(25)]}, "shadow between canaries"),
        ({"gates": ["error_rate", "agreement", "error_rate"]}, "duplicate gate"),
        ({"gates": ["error_rate", "no_such_gate"]}, "unknown gate"),
        ({"gates": []}, "no gates"),
        ({"colour": "red"}, "unknown top-level field"),
        ({"steps": [_canary(5, colour="red")]}, "unknown step field"),
        ({"thresholds": {"max_error_rate": 0.1}}, "unknown threshold field"),
        ({"candidate": "triage4"}, "candidate without '@'"),
        ({"candidate": "@2"}, "candidate too short"),
        ({"steps": [_canary(5, min_duration_s=3600)]}, "min_duration_s == deadline"),
        (
            {"steps": [_canary(5, min_duration_s=100)], "progress_deadline_s": 50},
            "min_duration_s > deadline",
        ),
        ({"steps": []}, "empty steps"),
        ({"failure_limit": 0}, "failure limit 0"),
        ({"inconclusive_limit": 0}, "inconclusive limit 0"),
        ({"progress_deadline_s": 0}, "deadline 0"),
        ({"steps": [_canary(5, min_samples=0)]}, "min_samples 0"),
    ],
)
def test_spec_refuses(extra: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({"candidate": "t@2", **extra})


@pytest.mark.parametrize(
    "steps",
    [
        [_canary(5), _canary(5), _canary(100)],  # equal weights do not decrease
        [_shadow(10), _shadow(100)],  # shadow only
        [_canary(100)],
        [_shadow(30), _canary(1)],
    ],
)
def test_spec_accepts(steps: list[dict[str, Any]]) -> None:
    spec = RolloutSpec.model_validate({"candidate": "t@2", "steps": steps})
    assert [s.weight for s in spec.steps] == [s["weight"] for s in steps]


# --- split ---------------------------------------------------------------------------------------

SUBJECTS = [f"user-{i}" for i in range(10_000)]
ROLLOUT = "ro-0001"


def canary_set(rollout_id: str, weight: int) -> set[str]:
    split = Split(rollout_id, "t@2", canary_weight=weight)
    chosen: set[str] = set()
    for i, subject in enumerate(SUBJECTS):
        decision = decide(split, "t@1", subject, f"req-{i}")
        if decision.arm is Arm.CANARY:
            assert decision.target == "t@2"
            assert decision.shadow_target is None
            chosen.add(subject)
        else:
            assert decision.arm is Arm.STABLE
            assert decision.target == "t@1"
    return chosen


def test_bucket_is_stable_and_in_range() -> None:
    values = [bucket(ROLLOUT, s) for s in SUBJECTS[:500]]
    assert all(0 <= v < 10_000 for v in values)
    assert values == [bucket(ROLLOUT, s) for s in SUBJECTS[:500]]


@pytest.mark.parametrize("weight", [1, 5, 25, 50])
def test_canary_share_matches_weight(weight: int) -> None:
    share = 100 * len(canary_set(ROLLOUT, weight)) / len(SUBJECTS)
    assert abs(share - weight) <= 1.0, share


def test_canary_share_at_the_ends() -> None:
    assert canary_set(ROLLOUT, 100) == set(SUBJECTS)
    assert canary_set(ROLLOUT, 0) == set()


def test_weight_rises_keep_canary_subjects() -> None:
    at5, at25, at50 = (canary_set(ROLLOUT, w) for w in (5, 25, 50))
    assert at5 <= at25 <= at50
    assert len(at5) < len(at25) < len(at50)


def test_subject_decision_is_sticky_across_requests() -> None:
    split = Split(ROLLOUT, "t@2", canary_weight=25)
    for subject in SUBJECTS[:200]:
        arms = {decide(split, "t@1", subject, f"req-{n}").arm for n in range(5)}
        assert len(arms) == 1


def test_new_rollout_id_reshuffles() -> None:
    first, second = canary_set("ro-0001", 25), canary_set("ro-0002", 25)
    assert first != second
    # Not merely different: about as unrelated as two independent draws (25 % of 25 %).
    overlap = 100 * len(first & second) / len(SUBJECTS)
    assert abs(overlap - 6.25) <= 1.5, overlap


def test_no_split_is_stable() -> None:
    for i, subject in enumerate(SUBJECTS[:200]):
        decision = decide(None, "t@1", subject, f"req-{i}")
        assert decision.arm is Arm.STABLE
        assert decision.target == "t@1"
        assert decision.shadow_target is None


def shadow_copies(percent: int) -> int:
    split = Split(ROLLOUT, "t@2", shadow_percent=percent)
    copies = 0
    for i in range(10_000):
        decision = decide(split, "t@1", "one-subject", f"req-{i}")
        # A shadow copy never changes who answers.
        assert decision.arm is Arm.STABLE
        assert decision.target == "t@1"
        if decision.shadow_target is not None:
            assert decision.shadow_target == "t@2"
            copies += 1
    return copies


def test_shadow_all_requests() -> None:
    assert shadow_copies(100) == 10_000


def test_shadow_no_requests() -> None:
    assert shadow_copies(0) == 0


def test_shadow_sampled_per_request() -> None:
    # One subject, many requests: sampling keys on the request id, not the subject.
    share = 100 * shadow_copies(30) / 10_000
    assert abs(share - 30) <= 2.0, share


# --- agreement -----------------------------------------------------------------------------------


def test_compare_json_objects_per_field() -> None:
    marks = compare(
        '{"label": "bug", "priority": 2, "tags": ["a", "b"], "team": "core"}',
        '{"priority": 3, "label": "bug", "tags": ["a", "b"], "extra": 1}',
    )
    assert marks == {"label": True, "priority": False, "tags": True, "team": False}


def test_compare_nested_values_compare_whole() -> None:
    assert compare('{"a": {"x": 1, "y": 2}}', '{"a": {"y": 2, "x": 1}}') == {"a": True}
    assert compare('{"a": {"x": 1}}', '{"a": {"x": 2}}') == {"a": False}


def test_compare_not_json_is_whole_answer() -> None:
    assert compare("Hello there", "  Hello there\n") == {WHOLE: True}
    assert compare("Hello there", "Goodbye") == {WHOLE: False}
    assert WHOLE == ""
    # A JSON value that is not an object, or an empty object, is also compared whole.
    assert compare("[1, 2]", "[1, 2]") == {"": True}
    assert compare("{}", '{"a": 1}') == {"": False}


def test_compare_candidate_not_json() -> None:
    assert compare('{"label": "bug", "team": "core"}', "label: bug") == {
        "label": False,
        "team": False,
    }
    assert compare('{"label": "bug"}', "[1]") == {"label": False}


def test_score() -> None:
    marks = {"label": True, "priority": False, "team": True, "tags": True}
    assert score(marks, None) == 0.75
    assert score(marks, ()) == 0.75
    assert score(marks, ("label", "priority")) == 0.5
    assert score(marks, ("label", "nowhere")) == 1.0
    assert score(marks, ("nowhere",)) is None
    assert score({}, None) is None
    assert score({WHOLE: True}, ("label",)) == 1.0
    assert score({WHOLE: False}, None) == 0.0


# --- figures and gates ---------------------------------------------------------------------------

ALL_GATES = LIVE_GATES
CANARY_STEP = Step(kind=StepKind.CANARY, weight=5, min_samples=20)
SHADOW_STEP = Step(kind=StepKind.SHADOW, weight=100, min_samples=20)


def many(
    arm: Arm,
    n: int,
    *,
    bad: int = 0,
    status: int = 200,
    bad_status: int = 500,
    latency_ms: float = 100.0,
    schema_valid: bool | None = None,
    escalated: bool | None = None,
    confidence: float | None = None,
    agreement: Mapping[str, bool] | None = None,
    fields: Mapping[str, object] | None = None,
) -> list[Sample]:
    """``n`` samples, the first ``bad`` of them with ``bad_status``."""
    return [
        Sample(
            arm,
            bad_status if i < bad else status,
            latency_ms,
            schema_valid,
            escalated,
            confidence,
            agreement,
            fields,
        )
        for i in range(n)
    ]


def spec_with(*gates: GateName, **thresholds: Any) -> RolloutSpec:
    """One shadow and one canary step; alpha 0.5 keeps the samples these tests need small (the
    intervals' coverage at the default alpha is tested in test_sequential)."""
    return RolloutSpec(
        candidate="t@2", gates=gates or ALL_GATES, thresholds=Thresholds(**thresholds),
        steps=(SHADOW_STEP, CANARY_STEP), alpha=0.5,
    )  # fmt: skip


def verdicts_of(results: tuple[GateResult, ...]) -> dict[GateName, Verdict]:
    return {r.gate: r.verdict for r in results}


def one(spec: RolloutSpec, step: Step, w: Window, gate: GateName) -> GateResult:
    [result] = [r for r in judge(spec, step, w) if r.gate is gate]
    return result


def full(arm: Arm, n: int = 100, **kw: Any) -> list[Sample]:
    """Samples that carry every figure, agreeing with stable."""
    base: dict[str, Any] = {
        "schema_valid": True,
        "escalated": False,
        "confidence": 0.9,
        "agreement": {"label": True},
        "fields": {"label": "a"},
    }
    base.update(kw)
    return many(arm, n, **base)


def test_arm_figures() -> None:
    samples = [
        Sample(Arm.CANARY, 200, 10.0, schema_valid=True, escalated=False, confidence=0.5),
        Sample(Arm.CANARY, 200, 30.0, schema_valid=False, escalated=True, confidence=0.7),
        Sample(Arm.CANARY, 422, 5.0),
        Sample(Arm.CANARY, 503, 900.0),
        Sample(Arm.CANARY, CLIENT_CLOSED, 5000.0, schema_valid=False, confidence=0.0),
    ]
    figures = arm_figures(samples)
    assert figures.samples == 4
    assert (figures.errors.hits, figures.errors.total) == (1, 4)
    assert figures.latency_p95_ms == 30.0  # only answers below 400 are timed
    assert (figures.schema_valid.hits, figures.schema_valid.total) == (1, 2)
    assert (figures.escalated.hits, figures.escalated.total) == (1, 2)
    assert figures.confidence_mean == pytest.approx(0.6)
    assert figures.confidence_n == 2
    empty = arm_figures([])
    assert empty.samples == 0 and empty.errors.value is None and empty.latency_p95_ms is None


def test_too_few_samples_is_inconclusive_for_every_gate() -> None:
    spec = spec_with()
    for stable_n, candidate_n in [(19, 19), (100, 19), (0, 0)]:
        w = window(full(Arm.STABLE, stable_n) + full(Arm.SHADOW, candidate_n), Arm.SHADOW)
        results = judge(spec, SHADOW_STEP, w)
        assert {r.gate for r in results} == set(ALL_GATES)
        assert set(verdicts_of(results).values()) == {Verdict.INCONCLUSIVE}, (stable_n, candidate_n)
        assert overall(results) is Verdict.INCONCLUSIVE
    # Too few stable samples: every gate comparing the arms is inconclusive. (Agreement counts
    # compared answers instead, each of which already pairs a stable answer with the shadow's.)
    w = window(full(Arm.STABLE, 19) + full(Arm.SHADOW, 100), Arm.SHADOW)
    results = judge(spec, SHADOW_STEP, w)
    assert {g for g, v in verdicts_of(results).items() if v is not Verdict.INCONCLUSIVE} == {
        GateName.AGREEMENT
    }
    assert overall(results) is Verdict.INCONCLUSIVE
    # The same figures at the floor are undecided: 20 samples cannot show a 2-point tolerance.
    w = window(full(Arm.STABLE, 20) + full(Arm.SHADOW, 20), Arm.SHADOW, None, 0.05)
    assert verdicts_of(judge(spec, SHADOW_STEP, w))[GateName.ERROR_RATE] is Verdict.INCONCLUSIVE
    # With enough samples every gate's interval lies within its limit.
    w = window(full(Arm.STABLE, 4000) + full(Arm.SHADOW, 4000), Arm.SHADOW, None, 0.05)
    assert set(verdicts_of(judge(spec, SHADOW_STEP, w)).values()) == {Verdict.PASS}


def test_window_splits_arms() -> None:
    samples = full(Arm.STABLE, 30) + full(Arm.CANARY, 20) + full(Arm.SHADOW, 10)
    canary = window(samples, Arm.CANARY)
    assert (canary.stable.samples, canary.candidate.samples) == (30, 20)
    shadow = window(samples, Arm.SHADOW)
    assert (shadow.stable.samples, shadow.candidate.samples) == (30, 10)
    assert len(shadow.agreements) == 10


def test_error_rate_gate() -> None:
    spec = spec_with(GateName.ERROR_RATE, max_error_rate_increase=0.02)
    stable = many(Arm.STABLE, 1000, bad=10)

    def result(candidate_errors: int) -> GateResult:
        w = window(stable + many(Arm.CANARY, 1000, bad=candidate_errors), Arm.CANARY)
        return one(spec, CANARY_STEP, w, GateName.ERROR_RATE)

    assert result(0).verdict is Verdict.PASS
    assert result(20).verdict is Verdict.INCONCLUSIVE  # 2 % vs 1 %: may be +2 points or more
    assert result(40).verdict is Verdict.INCONCLUSIVE  # +3 points, but could be within +2
    assert result(100).verdict is Verdict.FAIL  # +9 points: beyond +2 whatever the noise
    assert result(400).verdict is Verdict.FAIL
    worse = result(100)
    assert (worse.candidate, worse.stable, worse.limit) == (0.1, 0.01, 0.02)
    assert worse.low is not None and worse.high is not None
    assert 0.02 < worse.low < 0.09 < worse.high
    assert (worse.candidate_samples, worse.stable_samples) == (1000, 1000)
    assert worse.detail.startswith("candidate error rate 10.0 % [")
    assert worse.detail.endswith("worse beyond the 2-point tolerance")
    assert result(0).detail.endswith("within the 2-point tolerance")
    assert "undecided" in result(40).detail


def test_client_errors_are_not_errors() -> None:
    spec = spec_with(GateName.ERROR_RATE)
    w = window(many(Arm.STABLE, 1000) + many(Arm.CANARY, 1000, bad=500, bad_status=422), Arm.CANARY)
    assert one(spec, CANARY_STEP, w, GateName.ERROR_RATE).verdict is Verdict.PASS


def test_latency_p95_ratio_gate() -> None:
    spec = spec_with(GateName.LATENCY_P95_RATIO, max_latency_p95_ratio=1.5)
    stable = many(Arm.STABLE, 1000, latency_ms=100.0)
    level = latency_alpha(spec)

    def result(candidate_ms: float) -> GateResult:
        w = window(
            stable + many(Arm.CANARY, 1000, latency_ms=candidate_ms), Arm.CANARY, None, level
        )
        return one(spec, CANARY_STEP, w, GateName.LATENCY_P95_RATIO)

    assert result(140.0).verdict is Verdict.PASS
    assert result(150.0).verdict is Verdict.PASS
    assert result(160.0).verdict is Verdict.FAIL
    assert (result(160.0).candidate, result(160.0).stable) == (160.0, 100.0)
    # Without a level for the p95's bounds (or with too few requests to bound it), the ratio
    # is open above: never a pass.
    w = window(stable + many(Arm.CANARY, 1000, latency_ms=100.0), Arm.CANARY)
    assert one(spec, CANARY_STEP, w, GateName.LATENCY_P95_RATIO).verdict is Verdict.INCONCLUSIVE


def test_latency_gate_times_only_successes() -> None:
    spec = spec_with(GateName.LATENCY_P95_RATIO)
    # Slow failures do not make the candidate's p95 worse (the error gate judges them).
    candidate = many(Arm.CANARY, 1000, bad=300, latency_ms=100.0)
    candidate = [
        Sample(s.arm, s.status_code, 10_000.0 if s.status_code >= 500 else s.latency_ms)
        for s in candidate
    ]
    w = window(many(Arm.STABLE, 1000) + candidate, Arm.CANARY, None, latency_alpha(spec))
    assert one(spec, CANARY_STEP, w, GateName.LATENCY_P95_RATIO).verdict is Verdict.PASS
    # No successful request at all: nothing to time.
    w = window(many(Arm.STABLE, 100) + many(Arm.CANARY, 100, bad=100), Arm.CANARY)
    assert one(spec, CANARY_STEP, w, GateName.LATENCY_P95_RATIO).verdict is Verdict.INCONCLUSIVE


def test_agreement_gate_only_on_shadow_steps() -> None:
    spec = spec_with()
    w = window(full(Arm.STABLE) + full(Arm.CANARY), Arm.CANARY)
    canary_gates = {r.gate for r in judge(spec, CANARY_STEP, w)}
    assert GateName.AGREEMENT not in canary_gates
    assert canary_gates == set(ALL_GATES) - {GateName.AGREEMENT}
    w = window(full(Arm.STABLE) + full(Arm.SHADOW), Arm.SHADOW)
    assert GateName.AGREEMENT in {r.gate for r in judge(spec, SHADOW_STEP, w)}


def _agreement_window(agreeing: int, total: int = 1000) -> Window:
    samples = many(Arm.SHADOW, agreeing, agreement={"label": True}) + many(
        Arm.SHADOW, total - agreeing, agreement={"label": False}
    )
    return window(many(Arm.STABLE, 100) + samples, Arm.SHADOW)


def test_agreement_gate_threshold() -> None:
    spec = spec_with(GateName.AGREEMENT, min_agreement=0.8)
    low = one(spec, SHADOW_STEP, _agreement_window(700), GateName.AGREEMENT)
    assert low.verdict is Verdict.FAIL
    assert low.candidate == pytest.approx(0.7)
    assert low.high is not None and low.high < 0.8
    assert low.detail.startswith("the label field: agreement with stable 70.0 % [")
    assert low.detail.endswith("below the 80.0 % floor")
    assert one(spec, SHADOW_STEP, _agreement_window(800), GateName.AGREEMENT).verdict is (
        Verdict.INCONCLUSIVE  # right at the floor: undecided however long it runs
    )
    assert one(spec, SHADOW_STEP, _agreement_window(950), GateName.AGREEMENT).verdict is (
        Verdict.PASS
    )


def test_agreement_gate_needs_compared_answers() -> None:
    spec = spec_with(GateName.AGREEMENT)
    # Plenty of shadow samples, but only 10 with marks, and failed shadow answers do not count.
    samples = (
        many(Arm.SHADOW, 10, agreement={"label": True})
        + many(Arm.SHADOW, 50)
        + many(Arm.SHADOW, 50, bad=50, agreement={"label": True})
    )
    w = window(many(Arm.STABLE, 100) + samples, Arm.SHADOW)
    assert len(w.agreements) == 10
    assert one(spec, SHADOW_STEP, w, GateName.AGREEMENT).verdict is Verdict.INCONCLUSIVE


def test_agreement_gate_honours_fields() -> None:
    marks = {"label": True, "note": False}
    samples = many(Arm.SHADOW, 100, agreement=marks)
    w = window(many(Arm.STABLE, 100) + samples, Arm.SHADOW)
    every_field = spec_with(GateName.AGREEMENT)
    assert one(every_field, SHADOW_STEP, w, GateName.AGREEMENT).verdict is Verdict.FAIL
    label_only = spec_with(GateName.AGREEMENT, agreement_fields=("label",))
    result = one(label_only, SHADOW_STEP, w, GateName.AGREEMENT)
    assert (result.verdict, result.candidate) == (Verdict.PASS, 1.0)
    note_only = spec_with(GateName.AGREEMENT, agreement_fields=("note",))
    assert one(note_only, SHADOW_STEP, w, GateName.AGREEMENT).verdict is Verdict.FAIL
    # Fields that were never compared leave nothing to judge.
    elsewhere = spec_with(GateName.AGREEMENT, agreement_fields=("priority",))
    assert one(elsewhere, SHADOW_STEP, w, GateName.AGREEMENT).verdict is Verdict.INCONCLUSIVE


OPTIONAL = [
    (GateName.SCHEMA_VALID_RATE, "schema_valid", True, False),
    (GateName.ESCALATION_RATE, "escalated", False, True),
]


@pytest.mark.parametrize(("gate", "field", "good", "bad"), OPTIONAL)
def test_optional_rate_gates(gate: GateName, field: str, good: bool, bad: bool) -> None:
    spec = spec_with(gate, max_schema_valid_drop=0.02, max_escalation_rate_increase=0.05)

    def flagged(arm: Arm, n: int, value: bool) -> list[Sample]:
        figure: dict[str, Any] = {field: value}
        return many(arm, n, **figure)

    stable = flagged(Arm.STABLE, 1000, good)

    def verdict(candidate: list[Sample]) -> Verdict:
        return one(spec, CANARY_STEP, window(stable + candidate, Arm.CANARY), gate).verdict

    def worse(n: int) -> list[Sample]:
        return flagged(Arm.CANARY, n, bad) + flagged(Arm.CANARY, 1000 - n, good)

    assert verdict(flagged(Arm.CANARY, 1000, good)) is Verdict.PASS
    assert verdict(worse(1)) is Verdict.PASS
    assert verdict(worse(200)) is Verdict.FAIL
    # Absent data: requests without the figure are no evidence either way.
    assert verdict(many(Arm.CANARY, 1000)) is Verdict.INCONCLUSIVE
    assert verdict(flagged(Arm.CANARY, 10, bad) + many(Arm.CANARY, 990)) is Verdict.INCONCLUSIVE
    unknown_stable = window(many(Arm.STABLE, 1000) + worse(500), Arm.CANARY)
    assert one(spec, CANARY_STEP, unknown_stable, gate).verdict is Verdict.INCONCLUSIVE


def test_mean_confidence_gate() -> None:
    gate = GateName.MEAN_CONFIDENCE
    spec = spec_with(gate, max_confidence_drop=0.05)
    stable = many(Arm.STABLE, 4000, confidence=0.9)

    def verdict(candidate: list[Sample], base: list[Sample] = stable) -> Verdict:
        return one(spec, CANARY_STEP, window(base + candidate, Arm.CANARY), gate).verdict

    assert verdict(many(Arm.CANARY, 4000, confidence=0.95)) is Verdict.PASS
    assert verdict(many(Arm.CANARY, 4000, confidence=0.9)) is Verdict.PASS
    assert verdict(many(Arm.CANARY, 4000, confidence=0.85)) is Verdict.INCONCLUSIVE
    assert verdict(many(Arm.CANARY, 4000, confidence=0.7)) is Verdict.FAIL
    assert verdict(many(Arm.CANARY, 4000)) is Verdict.INCONCLUSIVE
    assert verdict(many(Arm.CANARY, 4000, confidence=0.9), many(Arm.STABLE, 4000)) is (
        Verdict.INCONCLUSIVE
    )


def test_client_closed_samples_are_ignored() -> None:
    spec = spec_with(GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO)
    hung_up = many(Arm.CANARY, 200, status=CLIENT_CLOSED, latency_ms=60_000.0)
    level = latency_alpha(spec)
    w = window(many(Arm.STABLE, 1000) + many(Arm.CANARY, 1000) + hung_up, Arm.CANARY, None, level)
    assert w.candidate.samples == 1000
    assert w.candidate.errors.value == 0.0
    assert set(verdicts_of(judge(spec, CANARY_STEP, w)).values()) == {Verdict.PASS}
    # Nor do they count towards the minimum number of samples.
    w = window(many(Arm.STABLE, 1000) + many(Arm.CANARY, 10) + hung_up, Arm.CANARY, None, level)
    assert set(verdicts_of(judge(spec, CANARY_STEP, w)).values()) == {Verdict.INCONCLUSIVE}


def _result(gate: GateName, verdict: Verdict) -> GateResult:
    return GateResult(gate, verdict, None, None, 0.0, "")


def test_overall_precedence() -> None:
    p = _result(GateName.ERROR_RATE, Verdict.PASS)
    f = _result(GateName.LATENCY_P95_RATIO, Verdict.FAIL)
    i = _result(GateName.AGREEMENT, Verdict.INCONCLUSIVE)
    assert overall((p, p)) is Verdict.PASS
    assert overall((p, i)) is Verdict.INCONCLUSIVE
    assert overall((i, p, f)) is Verdict.FAIL
    assert overall((f, i)) is Verdict.FAIL
    assert overall((f,)) is Verdict.FAIL
    assert overall(()) is Verdict.INCONCLUSIVE  # nothing judged is not a pass


# --- state machine: ticks ------------------------------------------------------------------------

SPEC = RolloutSpec(
    candidate="t@2",
    steps=(
        Step(kind=StepKind.SHADOW, weight=100, min_duration_s=60, min_samples=10),
        Step(kind=StepKind.CANARY, weight=10, min_duration_s=60, min_samples=10),
        Step(kind=StepKind.CANARY, weight=50, min_duration_s=60, min_samples=10),
    ),
    gates=(GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO, GateName.AGREEMENT),
    failure_limit=2,
    inconclusive_limit=3,
    progress_deadline_s=600,
    alpha=0.5,
)
# Windows large enough for the gates' intervals to decide at SPEC's alpha.
ENOUGH = 400


def _arm(state: State) -> Arm:
    return Arm.SHADOW if state.serving_phase() is Phase.SHADOW else Arm.CANARY


def judged(state: State, candidate: list[Sample]) -> tuple[GateResult, ...]:
    """The step's verdicts on a window, as the controller judges them before each tick."""
    w = window(full(Arm.STABLE, ENOUGH) + candidate, _arm(state), None, latency_alpha(SPEC))
    return judge(SPEC, SPEC.steps[state.step], w)


def passing(state: State) -> tuple[GateResult, ...]:
    return judged(state, full(_arm(state), ENOUGH))


def failing(state: State) -> tuple[GateResult, ...]:
    return judged(state, full(_arm(state), ENOUGH, bad=ENOUGH // 2))


def too_few(state: State) -> tuple[GateResult, ...]:
    return judged(state, full(_arm(state), 3))


def running(step: int, started: float = 0, **kw: Any) -> State:
    phase = Phase.SHADOW if SPEC.steps[step].kind is StepKind.SHADOW else Phase.CANARY
    return State(phase, step, at(started), **kw)


@pytest.mark.parametrize("state", [running(0), running(1)])
def test_the_windows_judge_as_named(state: State) -> None:
    assert set(verdicts_of(passing(state)).values()) == {Verdict.PASS}
    assert verdicts_of(failing(state))[GateName.ERROR_RATE] is Verdict.FAIL
    assert set(verdicts_of(too_few(state)).values()) == {Verdict.INCONCLUSIVE}


def test_pending_starts_first_step() -> None:
    state = State.new(at(0))
    assert state.phase is Phase.PENDING and state.active
    assert traffic(state, SPEC) == Traffic(0, 0)
    out = tick(state, SPEC, (), at(5))  # no evaluation's verdicts: no evaluate step
    assert out.state == State(Phase.SHADOW, 0, at(5))
    assert out.event is not None and out.changed
    assert (out.event.kind, out.event.from_phase, out.event.to_phase) == (
        "started",
        Phase.PENDING,
        Phase.SHADOW,
    )
    assert out.event.actor == "controller"
    assert traffic(out.state, SPEC) == Traffic(canary_weight=0, shadow_percent=100)


def test_passing_before_min_duration_stays() -> None:
    state = running(0)
    out = tick(state, SPEC, passing(state), at(59))
    assert out.state == state
    assert out.event is None and not out.changed


def test_steps_advance_then_promote() -> None:
    state = running(0)
    out = tick(state, SPEC, passing(state), at(60))
    assert out.event is not None and out.event.kind == "step_advanced"
    assert out.state == State(Phase.CANARY, 1, at(60))
    assert traffic(out.state, SPEC) == Traffic(canary_weight=10)

    state = out.state
    assert tick(state, SPEC, passing(state), at(100)).state == state  # the new step's own minimum
    out = tick(state, SPEC, passing(state), at(121))
    assert out.state == State(Phase.CANARY, 2, at(121))
    assert traffic(out.state, SPEC) == Traffic(canary_weight=50)

    state = out.state
    out = tick(state, SPEC, passing(state), at(200))
    assert out.event is not None
    assert (out.event.kind, out.event.from_phase, out.event.to_phase) == (
        "promoted",
        Phase.CANARY,
        Phase.PROMOTED,
    )
    assert out.state.phase is Phase.PROMOTED and not out.state.active
    assert traffic(out.state, SPEC) == Traffic(0, 0)


def test_step_advance_resets_counters() -> None:
    state = running(0, failures=1, inconclusive=2)
    out = tick(state, SPEC, passing(state), at(90))
    assert out.state == State(Phase.CANARY, 1, at(90))


def test_failures_count_then_roll_back() -> None:
    state = running(1)
    # A failed gate counts at once, minimum duration or not.
    out = tick(state, SPEC, failing(state), at(10))
    assert out.event is not None and out.event.kind == "analysis_failed"
    assert out.state == running(1, failures=1)
    assert "error_rate" in out.event.reason
    assert traffic(out.state, SPEC) == Traffic(canary_weight=10)

    out = tick(out.state, SPEC, failing(state), at(20))
    assert out.event is not None
    assert (out.event.kind, out.event.to_phase) == ("rolled_back", Phase.ROLLED_BACK)
    assert out.state.phase is Phase.ROLLED_BACK and out.state.failures == 2
    assert not out.state.active
    assert traffic(out.state, SPEC) == Traffic(0, 0)


def test_failure_limit_one_rolls_back_at_once() -> None:
    spec = SPEC.model_copy(update={"failure_limit": 1})
    state = running(0)
    out = tick(state, spec, failing(state), at(1))
    assert out.state.phase is Phase.ROLLED_BACK


def test_inconclusive_counts_after_min_duration_then_pauses() -> None:
    state = running(1)
    # Before the minimum duration, too few samples is expected and not counted.
    out = tick(state, SPEC, too_few(state), at(30))
    assert out.state == state and out.event is None

    out = tick(state, SPEC, too_few(state), at(61))
    assert out.event is None and out.state == running(1, inconclusive=1)
    out = tick(out.state, SPEC, too_few(state), at(71))
    assert out.event is None and out.state == running(1, inconclusive=2)
    out = tick(out.state, SPEC, too_few(state), at(81))
    assert out.event is not None
    assert (out.event.kind, out.event.from_phase, out.event.to_phase) == (
        "paused",
        Phase.CANARY,
        Phase.PAUSED,
    )
    assert out.state.phase is Phase.PAUSED
    assert out.state.paused_phase is Phase.CANARY
    assert out.state.inconclusive == 3
    assert out.state.active
    # A paused rollout keeps serving its step's traffic.
    assert traffic(out.state, SPEC) == Traffic(canary_weight=10)


def test_progress_deadline_rolls_back() -> None:
    state = running(2, inconclusive=1)
    assert tick(state, SPEC, too_few(state), at(600)).state.phase is Phase.CANARY
    out = tick(state, SPEC, too_few(state), at(601))
    assert out.event is not None
    assert out.event.kind == "rolled_back" and "deadline" in out.event.reason
    assert out.state.phase is Phase.ROLLED_BACK
    assert traffic(out.state, SPEC) == Traffic(0, 0)


@pytest.mark.parametrize(
    "state",
    [
        State(Phase.PAUSED, 1, at(0), paused_phase=Phase.CANARY),
        State(Phase.PAUSED, 0, at(0), paused_phase=Phase.PENDING),
        State(Phase.PROMOTED, 2, at(0)),
        State(Phase.ROLLED_BACK, 1, at(0), failures=2),
        State(Phase.ABORTED, 0, at(0)),
    ],
)
def test_tick_leaves_paused_and_terminal_alone(state: State) -> None:
    for verdicts in (passing(state), failing(state), too_few(state)):
        for seconds in (1, 61, 10_000):
            out = tick(state, SPEC, verdicts, at(seconds))
            assert out == Outcome(state)


# --- state machine: commands ---------------------------------------------------------------------

ACTIVE_STATES = [
    State.new(at(0)),
    running(0),
    running(2, failures=1),
    State(Phase.PAUSED, 1, at(0), paused_phase=Phase.CANARY),
]
TERMINAL_STATES = [
    State(Phase.PROMOTED, 2, at(0)),
    State(Phase.ROLLED_BACK, 1, at(0), failures=2),
    State(Phase.ABORTED, 1, at(0)),
]


def do(state: State, cmd: Command, seconds: float = 100) -> Outcome:
    return command(state, SPEC, cmd, "alice", f"because {cmd}", at(seconds))


def test_pause_and_resume() -> None:
    state = running(1, started=10, failures=1, inconclusive=2)
    out = do(state, Command.PAUSE)
    assert out.state == State(
        Phase.PAUSED, 1, at(10), failures=1, inconclusive=2, paused_phase=Phase.CANARY
    )
    assert out.event is not None
    assert (out.event.kind, out.event.actor, out.event.reason) == (
        "paused",
        "alice",
        "because pause",
    )
    assert traffic(out.state, SPEC) == Traffic(canary_weight=10)
    again = do(out.state, Command.PAUSE, 200)
    assert again == Outcome(out.state)

    resumed = do(out.state, Command.RESUME, 500)
    # The step's window starts again; failures are kept, the inconclusive run is not.
    assert resumed.state == State(Phase.CANARY, 1, at(500), failures=1)
    assert resumed.event is not None
    assert (resumed.event.kind, resumed.event.from_phase, resumed.event.to_phase) == (
        "resumed",
        Phase.PAUSED,
        Phase.CANARY,
    )
    assert do(resumed.state, Command.RESUME, 600) == Outcome(resumed.state)
    # The resumed step does not roll back on the time spent paused.
    after = tick(resumed.state, SPEC, too_few(resumed.state), at(700))
    assert after.state.phase is Phase.CANARY


def test_pause_pending_resumes_pending() -> None:
    out = do(State.new(at(0)), Command.PAUSE)
    assert out.state.phase is Phase.PAUSED and out.state.paused_phase is Phase.PENDING
    assert traffic(out.state, SPEC) == Traffic(0, 0)
    assert do(out.state, Command.RESUME).state == State.new(at(100))


@pytest.mark.parametrize("state", ACTIVE_STATES)
def test_promote_and_abort_from_active(state: State) -> None:
    promoted = do(state, Command.PROMOTE)
    assert promoted.state.phase is Phase.PROMOTED
    assert promoted.event is not None and promoted.event.kind == "promoted"
    assert promoted.event.from_phase is state.phase
    assert do(promoted.state, Command.PROMOTE) == Outcome(promoted.state)
    aborted = do(state, Command.ABORT)
    assert aborted.state.phase is Phase.ABORTED
    assert aborted.event is not None and aborted.event.kind == "aborted"
    assert traffic(aborted.state, SPEC) == Traffic(0, 0)
    assert do(aborted.state, Command.ABORT) == Outcome(aborted.state)


def test_promote_after_abort_and_abort_after_promote() -> None:
    aborted = do(running(1), Command.ABORT).state
    with pytest.raises(NotAllowed, match="promote"):
        do(aborted, Command.PROMOTE)
    promoted = do(running(1), Command.PROMOTE).state
    with pytest.raises(NotAllowed, match="abort"):
        do(promoted, Command.ABORT)


@pytest.mark.parametrize(
    ("state", "cmd"),
    [
        (State(Phase.PROMOTED, 2, at(0)), Command.RESUME),
        (State(Phase.PROMOTED, 2, at(0)), Command.PAUSE),
        (State(Phase.PROMOTED, 2, at(0)), Command.RETRY),
        (State(Phase.PROMOTED, 2, at(0)), Command.ABORT),
        (State(Phase.ROLLED_BACK, 1, at(0)), Command.RESUME),
        (State(Phase.ROLLED_BACK, 1, at(0)), Command.PAUSE),
        (State(Phase.ROLLED_BACK, 1, at(0)), Command.PROMOTE),
        (State(Phase.ROLLED_BACK, 1, at(0)), Command.ABORT),
        (State(Phase.ABORTED, 1, at(0)), Command.RESUME),
        (State(Phase.ABORTED, 1, at(0)), Command.PAUSE),
        (State(Phase.ABORTED, 1, at(0)), Command.PROMOTE),
        (running(0), Command.RETRY),
        (running(2), Command.RETRY),
        (State(Phase.PAUSED, 1, at(0), paused_phase=Phase.CANARY), Command.RETRY),
    ],
)
def test_commands_that_do_not_fit(state: State, cmd: Command) -> None:
    with pytest.raises(NotAllowed):
        do(state, cmd)


@pytest.mark.parametrize(
    "state", [State(Phase.ROLLED_BACK, 2, at(0), failures=2), State(Phase.ABORTED, 1, at(0))]
)
def test_retry_starts_over(state: State) -> None:
    out = do(state, Command.RETRY, 900)
    assert out.state == State.new(at(900))
    assert out.state == State(Phase.PENDING, 0, at(900))
    assert out.event is not None
    assert (out.event.kind, out.event.from_phase, out.event.to_phase, out.event.step) == (
        "retried",
        state.phase,
        Phase.PENDING,
        0,
    )
    assert do(out.state, Command.RETRY, 950) == Outcome(out.state)
    started = tick(out.state, SPEC, (), at(1000))
    assert started.state == State(Phase.SHADOW, 0, at(1000))


@pytest.mark.parametrize("state", ACTIVE_STATES + TERMINAL_STATES)
def test_repeated_commands_are_idempotent(state: State) -> None:
    for cmd in Command:
        try:
            first = do(state, cmd)
        except NotAllowed:
            continue
        assert do(first.state, cmd, 300) == Outcome(first.state)
