"""The rollout's evaluate step judged: a run's figures, candidate against baseline. Pure.

Each check asks whether the candidate is worse than the baseline by more than its limit
(``max_*_drop``), and fails only when the pack shows it: when the whole confidence interval of
the difference lies below minus the limit. A pack too small to tell passes, saying so, and the
live gates judge next. The checks share ``alpha`` evenly (Bonferroni), so a candidate within
every limit is rolled back here with probability at most ``alpha``.

- Cases passed and each judged field's exact match are paired (the same cases): of the ``m``
  cases where exactly one version passed, the candidate won ``b``; given ``m``, ``b`` is
  binomial with ``pi``, and the difference of the rates is ``(2 pi - 1) m / n``. Its interval
  comes from the exact (Clopper-Pearson) interval of ``pi`` (the conditional approach of
  McNemar's test).
- The schema-valid rate and each named scenario kind's pass rate are compared unpaired: the
  difference is bounded by the arms' own Wilson intervals, each at half the check's share.

A run still going is ``inconclusive``; one that failed or lost its gateway fails the step
(``retry`` starts a new run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import binomtest

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


@dataclass(frozen=True, slots=True)
class _Check:
    what: str
    candidate: Mapping[str, Any]  # a rate: hits, n, value
    baseline: Mapping[str, Any]
    drop: float
    paired: Mapping[str, Any] | None  # the comparison's only_candidate/only_baseline, if paired


def judge(spec: Evaluation, result: EvalResult) -> tuple[GateResult, ...]:
    run = f"evaluation {result.run_id}"
    if result.status == "running":
        return (_result(Verdict.INCONCLUSIVE, f"{run} is running"),)
    if result.status != "done" or result.figures is None:
        return (_result(Verdict.FAIL, f"{run} {result.status}: {result.reason or 'no figures'}"),)
    arms = result.figures["arms"]
    if "baseline" not in arms:
        return (_result(Verdict.PASS, f"{run}: no baseline to compare with"),)
    checks = _checks(spec, result.figures)
    alpha = spec.alpha / max(1, len(checks))
    name = result.baseline or "the baseline"
    return tuple(_judged(f"{run}: {c.what}", name, c, alpha) for c in checks)


def _checks(spec: Evaluation, figures: Mapping[str, Any]) -> list[_Check]:
    candidate, baseline = figures["arms"]["candidate"], figures["arms"]["baseline"]
    compared = figures["comparison"]
    checks = [_Check("cases passed", candidate["passed"], baseline["passed"],
                     spec.max_pass_rate_drop, compared["passed"])]  # fmt: skip
    for field, found in candidate["fields"].items():
        theirs, paired = baseline["fields"].get(field), compared["fields"].get(field)
        if theirs is not None and paired is not None:
            drop = spec.max_field_match_drop
            mine, their = found["exact_match"], theirs["exact_match"]
            checks.append(_Check(f"{field} exact match", mine, their, drop, paired))
    checks.append(_Check("schema-valid", candidate["schema_valid"], baseline["schema_valid"],
                         spec.max_schema_valid_drop, None))  # fmt: skip
    for kind, drop in sorted(spec.max_kind_drop.items()):
        mine, theirs = candidate["by_kind"].get(kind), baseline["by_kind"].get(kind)
        if mine is not None and theirs is not None:
            checks.append(_Check(f"{kind} cases passed", mine, theirs, drop, None))
    return [c for c in checks if c.candidate["n"] and c.baseline["n"]]  # both arms judged


def difference(check: _Check, alpha: float) -> tuple[float, float]:
    """The (low, high) interval of candidate's rate minus baseline's, at level 1 - alpha."""
    c, s = check.candidate, check.baseline
    if check.paired is not None:
        won, lost = check.paired["only_candidate"], check.paired["only_baseline"]
        m, n = won + lost, c["n"]
        if m == 0:
            return 0.0, 0.0
        ci = binomtest(won, m).proportion_ci(confidence_level=1 - alpha, method="exact")
        return (2 * ci.low - 1) * m / n, (2 * ci.high - 1) * m / n
    mine = binomtest(c["hits"], c["n"]).proportion_ci(1 - alpha / 2, method="wilson")
    theirs = binomtest(s["hits"], s["n"]).proportion_ci(1 - alpha / 2, method="wilson")
    return mine.low - theirs.high, mine.high - theirs.low


def _judged(what: str, name: str, check: _Check, alpha: float) -> GateResult:
    low, high = difference(check, alpha)
    floor = -check.drop
    verdict = Verdict.FAIL if high < floor - EPSILON else Verdict.PASS
    if verdict is Verdict.FAIL:
        said = f"worse by more than {100 * check.drop:g} points"
    elif low >= floor - EPSILON:
        said = f"within {100 * check.drop:g} points"
    else:
        said = "this pack is too small to tell; the live gates judge next"
    c, s = check.candidate["value"], check.baseline["value"]
    detail = (
        f"{what} {pct(c)} vs {name} {pct(s)}: difference [{100 * low:+.1f}, {100 * high:+.1f}] "
        f"points, {said}"
    )
    return GateResult(
        GATE, verdict, c, s, floor, detail, low=low, high=high,
        candidate_samples=check.candidate["n"], stable_samples=check.baseline["n"], alpha=alpha,
    )  # fmt: skip


def _result(verdict: Verdict, detail: str) -> GateResult:
    return GateResult(GATE, verdict, None, None, 0.0, detail)
