"""The rollout's evaluate step judged: a run's figures, candidate against baseline. Pure.

The run answered the same cases with both versions, so the decisive check is the paired one
(McNemar's exact test, computed with the run): a candidate found ``worse`` case by case fails.
The limits then bound what a paired test can miss on a small pack: the pass rate, each judged
field's exact match, the schema-valid rate and each named scenario kind may fall at most their
``max_*_drop`` below the baseline's. A run still going is ``inconclusive``; one that failed or
lost its gateway fails the step (``retry`` starts a new run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollout.core.spec import Evaluation, GateName
from rollout.core.verdicts import EPSILON, GateResult, Verdict
from rollout.core.wording import pct

GATE = GateName.EVALUATION


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A run as the rollout reads it."""

    run_id: str
    status: str  # running | done | failed | interrupted
    reason: str | None = None
    baseline: str | None = None
    figures: Mapping[str, Any] | None = None


def judge(spec: Evaluation, result: EvalResult) -> tuple[GateResult, ...]:
    run = f"evaluation {result.run_id}"
    if result.status == "running":
        return (_result(Verdict.INCONCLUSIVE, f"{run} is running"),)
    if result.status != "done" or result.figures is None:
        return (_result(Verdict.FAIL, f"{run} {result.status}: {result.reason or 'no figures'}"),)
    arms = result.figures["arms"]
    if "baseline" not in arms:
        return (_result(Verdict.PASS, f"{run}: no baseline to compare with"),)
    candidate, baseline = arms["candidate"], arms["baseline"]
    name = result.baseline or "the baseline"
    checks = [_paired(run, name, result.figures["comparison"]["passed"])]
    checks.append(_rate(f"{run}: cases passed", name, candidate["passed"], baseline["passed"],
                        spec.max_pass_rate_drop))  # fmt: skip
    for field, found in candidate["fields"].items():
        theirs = baseline["fields"].get(field)
        if theirs is not None:
            checks.append(_rate(f"{run}: {field} exact match", name, found["exact_match"],
                                theirs["exact_match"], spec.max_field_match_drop))  # fmt: skip
    if candidate["schema_valid"]["n"] and baseline["schema_valid"]["n"]:
        checks.append(_rate(f"{run}: schema-valid", name, candidate["schema_valid"],
                            baseline["schema_valid"], spec.max_schema_valid_drop))  # fmt: skip
    for kind, drop in sorted(spec.max_kind_drop.items()):
        mine, theirs = candidate["by_kind"].get(kind), baseline["by_kind"].get(kind)
        if mine is not None and theirs is not None:
            checks.append(_rate(f"{run}: {kind} cases passed", name, mine, theirs, drop))
    return tuple(checks)


def _paired(run: str, name: str, compared: Mapping[str, Any]) -> GateResult:
    worse = compared["verdict"] == "worse"
    detail = (
        f"{run}: {compared['verdict']} than {name} case by case ({compared['only_candidate']} "
        f"cases only the candidate passed, {compared['only_baseline']} only {name}; "
        f"p = {compared['p_value']:.3g})"
    )
    return _result(Verdict.FAIL if worse else Verdict.PASS, detail)


def _rate(
    what: str, name: str, mine: Mapping[str, Any], theirs: Mapping[str, Any], drop: float
) -> GateResult:
    c, s = mine["value"], theirs["value"]
    if c is None or s is None:
        return _result(Verdict.PASS, f"{what}: nothing to compare")
    floor = s - drop
    verdict = Verdict.PASS if c >= floor - EPSILON else Verdict.FAIL
    relation = "at least" if verdict is Verdict.PASS else "below"
    detail = f"{what} {pct(c)} vs {name} {pct(s)}: {relation} the floor {pct(max(floor, 0.0))}"
    return GateResult(
        GATE, verdict, c, s, floor, detail, candidate_low=mine["low"],
        candidate_high=mine["high"], stable_low=theirs["low"], stable_high=theirs["high"],
        candidate_samples=mine["n"], stable_samples=theirs["n"],
    )  # fmt: skip


def _result(verdict: Verdict, detail: str) -> GateResult:
    return GateResult(GATE, verdict, None, None, 0.0, detail)
