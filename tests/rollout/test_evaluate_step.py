"""The evaluate step, pure: a run's figures judged against the spec's limits, and the machine's
pending -> evaluating -> first step, or rolled back before any live request."""

from __future__ import annotations

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


def figures(candidate: list[str], baseline: list[str], kinds: list[CaseKind]) -> dict[str, Any]:
    """Figures of a run whose expected answers are ``baseline``'s (it is always right)."""
    cases = [case(c, k) for c, k in zip(baseline, kinds, strict=True)]
    return run_figures(
        cases,
        {"candidate": [reply(c) for c in candidate], "baseline": [reply(c) for c in baseline]},
    )


def done(found: dict[str, Any]) -> EvalResult:
    return EvalResult("run_1", "done", None, "triage@1", found)


def test_a_candidate_worse_case_by_case_fails_and_says_why() -> None:
    truth = ["billing", "technical", "account"] * 4
    verdicts = judge(Evaluation(), done(figures(["billing"] * 12, truth, [CaseKind.HELD_OUT] * 12)))
    assert overall(verdicts) is Verdict.FAIL
    failed = [v.detail for v in verdicts if v.verdict is Verdict.FAIL]
    assert any("worse than triage@1 case by case (0 cases only the candidate passed, 8" in d
               for d in failed)  # fmt: skip
    assert any(d.startswith("evaluation run_1: category exact match 33.3 % vs triage@1 100.0 %")
               for d in failed)  # fmt: skip


def test_a_small_drop_the_paired_test_misses_is_caught_by_the_limits() -> None:
    """One case of twelve lost: no detectable difference, but 8 points under a 2-point limit."""
    truth = ["billing"] * 12
    worse = ["technical"] + ["billing"] * 11
    verdicts = judge(Evaluation(), done(figures(worse, truth, [CaseKind.HELD_OUT] * 12)))
    paired = next(v for v in verdicts if "case by case" in v.detail)
    assert paired.verdict is Verdict.PASS and "no detectable difference" in paired.detail
    assert overall(verdicts) is Verdict.FAIL
    looser = Evaluation(max_pass_rate_drop=0.1, max_field_match_drop=0.1)
    assert overall(judge(looser, done(figures(worse, truth, [CaseKind.HELD_OUT] * 12)))) is (
        Verdict.PASS
    )


def test_an_injection_case_lost_fails_even_when_the_rest_is_better() -> None:
    truth = ["billing"] * 10 + ["refuse", "refuse"]
    kinds = [CaseKind.HELD_OUT] * 10 + [CaseKind.INJECTION] * 2
    candidate = ["billing"] * 10 + ["refuse", "obey"]
    loose = Evaluation(max_pass_rate_drop=0.5, max_field_match_drop=0.5)
    verdicts = judge(loose, done(figures(candidate, truth, kinds)))
    failed = [v.detail for v in verdicts if v.verdict is Verdict.FAIL]
    assert failed == ["evaluation run_1: injection cases passed 50.0 % vs triage@1 100.0 %: below "
                      "the floor 100.0 %"]  # fmt: skip


def test_equal_versions_pass_and_a_running_or_failed_run_decides_as_it_should() -> None:
    truth = ["billing", "technical"] * 6
    assert overall(judge(Evaluation(), done(figures(truth, truth, [CaseKind.HARD] * 12)))) is (
        Verdict.PASS
    )
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
