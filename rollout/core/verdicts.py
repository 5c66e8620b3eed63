"""A gate's verdict and how an interval decides it. Pure.

A gate judges one quantity (a difference of rates, a latency ratio, an agreement, a distance)
with a confidence sequence: ``pass`` when the whole interval lies on the allowed side of the
gate's limit, ``fail`` when it lies wholly beyond it, and ``inconclusive`` (undecided) while it
straddles the limit, or while a step has fewer samples than its floor. Because the interval
holds at every analysis at once, looking again every tick does not raise the error rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rollout.core.sequential import Interval
from rollout.core.spec import GateName

# Rates are differences of fractions: 1.0 - 0.98 is 0.020000000000000018, and a limit is "at most".
EPSILON = 1e-9


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    # Undecided: the interval straddles the limit, or the step has too few samples yet.
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate at one analysis. ``candidate``/``stable`` are the point estimates, ``low`` and
    ``high`` the interval of the judged quantity (``None``: not judged yet), and ``detail`` the
    decision in a sentence."""

    gate: GateName
    verdict: Verdict
    candidate: float | None
    stable: float | None
    limit: float
    detail: str
    low: float | None = None
    high: float | None = None
    candidate_low: float | None = None
    candidate_high: float | None = None
    stable_low: float | None = None
    stable_high: float | None = None
    candidate_samples: int = 0
    stable_samples: int = 0
    alpha: float | None = None


def overall(results: tuple[GateResult, ...]) -> Verdict:
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts or not results:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def at_most(interval: Interval, limit: float) -> Verdict:
    """The quantity must be at most ``limit``."""
    if interval.high <= limit + EPSILON:
        return Verdict.PASS
    if interval.low > limit + EPSILON:
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE


def at_least(interval: Interval, floor: float) -> Verdict:
    """The quantity must be at least ``floor``."""
    if interval.low >= floor - EPSILON:
        return Verdict.PASS
    if interval.high < floor - EPSILON:
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE
