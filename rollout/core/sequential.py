"""Confidence sequences: intervals that hold at every look at once. Pure.

A gate re-analysed every tick looks at a growing sample again and again; a fixed-sample interval
checked at each look would be wrong far more often than its level says. A *confidence sequence*
``(C_n)`` at level ``alpha`` covers the true value at every ``n`` simultaneously:
``P(exists n: theta not in C_n) <= alpha``, so it may be checked after every request.

The one used here is the beta-binomial conjugate mixture (Robbins 1970, "Statistical methods
related to the law of the iterated logarithm"; Howard, Ramdas, McAuliffe & Sekhon 2021,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2), section 3,
conjugate mixtures). For observations ``X_i`` in ``[0, 1]`` with mean ``p`` and ``S_n`` their sum,

    M_n(p) = B(a + S_n, b + n - S_n) / B(a, b) / (p^S_n (1 - p)^(n - S_n))

is the Bernoulli likelihood ratio mixed over a Beta(a, b) prior on the alternative. For a
Bernoulli ``X`` it is a martingale under ``p``; for any ``X`` in ``[0, 1]`` a nonnegative
supermartingale, because ``x -> q^x (1 - q)^(1 - x)`` is convex, so its mean is at most that of the
Bernoulli with the same mean. Ville's inequality gives ``P(exists n: M_n(p) >= 1/alpha) <= alpha``,
hence ``C_n = {p : M_n(p) < 1/alpha}`` is a confidence sequence; ``log M_n`` is convex in ``p``, so
``C_n`` is an interval around ``S_n / n``, found here by root finding. Jeffreys' prior
``Beta(1/2, 1/2)`` keeps the width near ``sqrt(2 p (1 - p) log(sqrt(n) / alpha) / n)`` and adapts to
rare events (a rate of 0 out of ``n`` gets an upper bound near ``log(sqrt(n) / alpha) / n``).

Quantiles (the latency gate) come from the same sequence (Howard & Ramdas 2022, "Sequential
estimation of quantiles with applications to A/B-testing and best-arm identification", Bernoulli
28(3)): the count of observations at or below the true ``q``-quantile is Binomial(n, q), so the
counts the sequence allows at ``p = q`` give order statistics that bracket it at every ``n``.

Two arms and several gates and steps are combined by a union bound: each interval gets its
share of ``alpha`` (``split``), so every decision of a rollout is right at once with probability
at least ``1 - alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy

# Jeffreys' prior for the mixture (see the module docstring).
PRIOR_A = 0.5
PRIOR_B = 0.5
# Bounds are searched in [EDGE, 1 - EDGE]: the likelihood ratio is infinite at 0 and 1 once an
# observation excludes them.
EDGE = 1e-12


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"an interval needs low <= high, got [{self.low}, {self.high}]")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def log_mixture(p: float, total: ArrayLike, n: ArrayLike) -> np.ndarray:
    """``log M_n(p)`` for ``n`` observations summing to ``total`` (element-wise over arrays):
    ``p`` lies outside the interval exactly where this reaches ``log(1 / alpha)``."""
    total, n = np.asarray(total, dtype=float), np.asarray(n, dtype=float)
    return np.asarray(
        betaln(PRIOR_A + total, PRIOR_B + n - total)
        - betaln(PRIOR_A, PRIOR_B)
        - xlogy(total, p)
        - xlog1py(n - total, -p)
    )


def _log_mixture(p: float, total: float, n: int) -> float:
    # The scalar form of ``log_mixture``: root finding calls it many times per interval.
    return float(
        betaln(PRIOR_A + total, PRIOR_B + n - total)
        - betaln(PRIOR_A, PRIOR_B)
        - xlogy(total, p)
        - xlog1py(n - total, -p)
    )


def mean_interval(total: float, n: int, alpha: float) -> Interval:
    """The confidence sequence's interval for the mean of ``n`` values in [0, 1] summing to
    ``total``, at level ``alpha`` (time-uniform: valid at every ``n`` at once)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n <= 0:
        return Interval(0.0, 1.0)
    total = min(max(total, 0.0), float(n))
    level = math.log(1 / alpha)
    centre = total / n

    def excess(p: float) -> float:
        return _log_mixture(p, total, n) - level

    # At the centre the likelihood ratio is smallest; below the level there, nothing is excluded
    # only when the whole [0, 1] stays below it (the sample is still too small to tell).
    bottom, top = min(EDGE, centre), max(1 - EDGE, centre)
    low = 0.0 if excess(bottom) < 0 else float(brentq(excess, bottom, centre))
    high = 1.0 if excess(top) < 0 else float(brentq(excess, centre, top))
    return Interval(min(low, centre), max(high, centre))


def rate_interval(hits: int, n: int, alpha: float) -> Interval:
    """The interval for a rate of ``hits`` out of ``n`` (a special case of ``mean_interval``)."""
    return mean_interval(float(hits), n, alpha)


def quantile_ranks(n: int, q: float, alpha: float) -> tuple[int | None, int | None]:
    """1-based ranks of the order statistics that bracket the ``q``-quantile of ``n`` values at
    every ``n`` at once, at level ``alpha``: ``None`` where the sample cannot bound that side
    yet (the lower end is then 0, the upper one unbounded)."""
    if n <= 0:
        return None, None
    level = math.log(1 / alpha)
    # The allowed counts are an interval around q * n (log M is convex in the count): search a
    # window a few standard deviations wide, doubled until both ends of the interval lie in it.
    width = 16 + int(4 * math.sqrt(n * q * (1 - q) * (level + math.log(n + 1))))
    while True:
        first = max(0, int(q * n) - width)
        last = min(n, int(q * n) + width)
        counts = np.arange(first, last + 1, dtype=float)
        allowed = np.flatnonzero(log_mixture(q, counts, n) < level) + first
        if first == 0 and last == n:
            break
        if (
            allowed.size
            and (allowed[0] > first or first == 0)
            and (allowed[-1] < last or last == n)
        ):
            break
        width *= 2
    if allowed.size == 0:  # cannot happen for 0 < q < 1, but a caller must not index nothing
        return None, None
    fewest, most = int(allowed[0]), int(allowed[-1])
    # At least ``fewest`` values lie at or below the quantile: the fewest-th smallest does too.
    # At most ``most`` do: the (most + 1)-th smallest lies above it.
    return (fewest if fewest >= 1 else None), (most + 1 if most + 1 <= n else None)


def order_statistic(sorted_values: list[float], rank: int | None) -> float | None:
    return sorted_values[rank - 1] if rank is not None else None


def difference(candidate: Interval, stable: Interval) -> Interval:
    """Where ``candidate - stable`` lies when each lies in its interval."""
    return Interval(candidate.low - stable.high, candidate.high - stable.low)


def split(alpha: float, parts: int) -> float:
    """Each of ``parts`` intervals' share of ``alpha`` (Bonferroni: the union bound)."""
    return alpha / max(parts, 1)
