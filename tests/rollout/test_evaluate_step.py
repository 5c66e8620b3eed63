"""The evaluate step, pure: a run's figures judged against the spec's limits, and the machine's
pending -> evaluating -> first step, or rolled back before any live request."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from rollout.core.evaluation_gate import EvalResult, judge
from rollout.core.machine import Phase, State, Traffic, tick, traffic
from rollout.core.spec import Evaluation, RolloutSpec
from rollout.core.verdicts import Verdict, overall
from service.evaluation.cases import Case, CaseKind
from service.evaluation.scoring import Reply
from service.evaluation.summary import run_figures

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SPEC = RolloutSpec(candidate="triage@2", progress_deadline_s=600)


def case(category: str, kind: CaseKind = CaseKind.HELD_OUT) -> Case:
    return Case(({"role": "user", "content": category},), f'{{"category": "{category}"}}', kind)


def reply(category: str) -> Reply:
    return Reply(f'{{"category": "{category}"}}', schema_valid=True)


def figures(
    candidate: list[str], truth: list[str], kinds: list[CaseKind], baseline: list[str] | None = None
) -> dict[str, Any]:
    """Figures of a run whose expected answers are ``truth``; the baseline answers ``baseline``
    (the truth itself by default)."""
    cases = [case(c, k) for c, k in zip(truth, kinds, strict=True)]
    theirs = truth if baseline is None else baseline
    return run_figures(
        cases, {"candidate": [reply(c) for c in candidate], "baseline": [reply(c) for c in theirs]}
    )


def done(found: dict[str, Any]) -> EvalResult:
    return EvalResult("run_1", "done", None, "triage@1", found)


def test_a_candidate_clearly_worse_fails_and_says_why() -> None:
    truth = ["billing", "technical", "account"] * 4
    verdicts = judge(Evaluation(), done(figures(["billing"] * 12, truth, [CaseKind.HELD_OUT] * 12)))
    assert overall(verdicts) is Verdict.FAIL
    failed = [v.detail for v in verdicts if v.verdict is Verdict.FAIL]
    assert any(d.startswith("evaluation run_1: cases passed 33.3 % vs triage@1 100.0 %: "
                            "difference [") and d.endswith("worse by more than 2 points")
               for d in failed)  # fmt: skip
    assert any("category exact match" in d for d in failed)


def test_a_pack_too_small_to_tell_lets_the_live_gates_judge() -> None:
    """One case of twelve lost, and one injection case of two: the pack cannot tell a 2-point
    drop from chance, so the candidate goes on, and the verdict says why."""
    truth = ["billing"] * 10 + ["refuse", "refuse"]
    kinds = [CaseKind.HELD_OUT] * 10 + [CaseKind.INJECTION] * 2
    candidate = ["billing"] * 10 + ["refuse", "obey"]
    verdicts = judge(Evaluation(), done(figures(candidate, truth, kinds)))
    assert overall(verdicts) is Verdict.PASS
    passed = next(v for v in verdicts if "cases passed 91.7 %" in v.detail)
    assert passed.detail.endswith("this pack is too small to tell; the live gates judge next")
    assert passed.low is not None and passed.high is not None
    assert passed.low < -0.02 < 0 < passed.high
    assert any(v.detail.startswith("evaluation run_1: injection cases passed 50.0 %")
               for v in verdicts)  # fmt: skip


def test_a_large_pack_catches_a_drop_past_the_limit() -> None:
    """400 cases, 40 lost: a 10-point drop, far past the 2-point limit even at this alpha."""
    truth = ["billing"] * 400
    candidate = ["technical"] * 40 + ["billing"] * 360
    verdicts = judge(Evaluation(), done(figures(candidate, truth, [CaseKind.HELD_OUT] * 400)))
    assert overall(verdicts) is Verdict.FAIL
    passed = [v for v in verdicts if "cases passed" in v.detail]
    assert passed and all(v.high is not None and v.high < -0.02 for v in passed)


def test_a_candidate_at_the_limit_is_rolled_back_at_most_alpha_of_the_time() -> None:
    """Simulated: 300 packs of 100 cases, the candidate passing each case with a probability 2
    points below the baseline's (exactly at the limit), their answers independent. At most
    alpha = 5 % of them may roll it back."""
    rng = random.Random(1)
    rolled_back = 0
    truth = ["billing"] * 100
    for _ in range(300):
        theirs = ["billing" if rng.random() < 0.80 else "x" for _ in range(100)]
        mine = ["billing" if rng.random() < 0.78 else "x" for _ in range(100)]
        found = figures(mine, truth, [CaseKind.HELD_OUT] * 100, baseline=theirs)
        rolled_back += overall(judge(Evaluation(), done(found))) is Verdict.FAIL
    assert rolled_back / 300 <= 0.05


def test_equal_versions_pass_and_a_running_or_failed_run_decides_as_it_should() -> None:
    truth = ["billing", "technical"] * 6
    same = judge(Evaluation(), done(figures(truth, truth, [CaseKind.HARD] * 12)))
    assert overall(same) is Verdict.PASS
    assert all(v.detail.endswith("within 2 points") for v in same if "passed" in v.detail)
    assert overall(judge(Evaluation(), EvalResult("run_1", "running"))) is Verdict.INCONCLUSIVE
    lost = judge(Evaluation(), EvalResult("run_1", "interrupted", "its gateway stopped"))
    assert overall(lost) is Verdict.FAIL and "interrupted: its gateway stopped" in lost[0].detail


def test_the_machine_evaluates_before_any_traffic() -> None:
    pending = State.new(T0)
    running = judge(Evaluation(), EvalResult("run_1", "running"))
    evaluating = tick(replace_run(pending), SPEC, running, T0 + timedelta(seconds=1)).state
    assert evaluating.phase is Phase.EVALUATING and evaluating.evaluation_run == "run_1"
    assert traffic(evaluating, SPEC) == Traffic()  # not a single live request
    still = tick(evaluating, SPEC, running, T0 + timedelta(seconds=60))
    assert still.state == evaluating and not still.changed
    truth = ["billing"] * 12
    passed = judge(Evaluation(), done(figures(truth, truth, [CaseKind.HELD_OUT] * 12)))
    started = tick(evaluating, SPEC, passed, T0 + timedelta(seconds=90))
    assert started.state.phase is Phase.SHADOW and started.state.evaluation_run == "run_1"
    assert started.event is not None and started.event.reason.startswith("evaluation passed (")
    failed = judge(Evaluation(), done(figures(["x"] * 12, truth, [CaseKind.HELD_OUT] * 12)))
    back = tick(evaluating, SPEC, failed, T0 + timedelta(seconds=90))
    assert back.state.phase is Phase.ROLLED_BACK and back.event is not None
    assert back.event.reason.startswith("evaluation failed, before any live request: ")
    late = tick(evaluating, SPEC, running, T0 + timedelta(seconds=700))
    assert late.state.phase is Phase.ROLLED_BACK
    assert late.event is not None and "the evaluation did not end" in late.event.reason


def replace_run(state: State) -> State:
    return State(state.phase, state.step, state.step_started_at, evaluation_run="run_1")


def test_evaluation_is_configured_apart_from_the_live_gates() -> None:
    with pytest.raises(ValidationError, match="not a live gate"):
        RolloutSpec(candidate="triage@2", gates=["error_rate", "evaluation"])
    spec = RolloutSpec.model_validate({"candidate": "t@2", "evaluation": {"pack": "gold@1"}})
    assert spec.evaluation.enabled and spec.evaluation.max_kind_drop["injection"] == 0.0
