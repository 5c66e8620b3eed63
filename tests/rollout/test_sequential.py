"""The confidence sequences the gates decide with, and the pure gate functions' properties.

Coverage is measured by simulation (seeded, bounded): intervals checked after every
observation, as a gate re-analysed every tick checks them, must all hold on at least
``1 - alpha`` of the paths.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.core.gates import Tally, agreement_gate, rate_gate
from rollout.core.sequential import (
    Interval,
    difference,
    log_mixture,
    mean_interval,
    quantile_ranks,
    split,
)
from rollout.core.spec import GateName
from rollout.core.verdicts import Verdict, at_least, at_most

PATHS = 1000
LENGTH = 1000
LOOKS = np.arange(1, LENGTH + 1)


def missed(p: float, sums: np.ndarray, alpha: float) -> float:
    """The share of paths whose interval excluded ``p`` at some look: the interval excludes
    ``p`` exactly where the mixture reaches the level (checked against the intervals below)."""
    return float((log_mixture(p, sums, LOOKS) >= np.log(1 / alpha)).any(axis=1).mean())


@pytest.mark.parametrize("p", [0.01, 0.3, 0.7])
def test_the_rate_sequence_covers_at_every_look(p: float) -> None:
    alpha = 0.05
    sums = np.cumsum(np.random.default_rng(7).random((PATHS, LENGTH)) < p, axis=1)
    # Every look, as often as the controller could look: after each observation.
    assert missed(p, sums, alpha) <= alpha


def test_a_fixed_sample_interval_looked_at_every_time_is_wrong_far_more_often() -> None:
    """Why the gates needed this: a 95 % Wald interval checked after each of 1,000 requests
    excludes the true rate on most paths."""
    p, z = 0.3, 1.959964
    sums = np.cumsum(np.random.default_rng(7).random((PATHS, LENGTH)) < p, axis=1)
    rate = sums / LOOKS
    half = z * np.sqrt(rate * (1 - rate) / LOOKS)
    naive = float((np.abs(rate - p) > half)[:, 29:].any(axis=1).mean())  # from 30 on
    assert naive > 0.3 > 0.05 >= missed(p, sums, 0.05)


def test_the_sequence_holds_for_bounded_values_not_only_flags() -> None:
    alpha, mean = 0.05, 0.6
    values = np.random.default_rng(11).beta(3, 2, (PATHS, LENGTH))  # mean 0.6, in [0, 1]
    assert missed(mean, np.cumsum(values, axis=1), alpha) <= alpha


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.floats(0.001, 0.999),
    st.sampled_from([0.001, 0.05, 0.3]),
)
def test_the_interval_is_where_the_mixture_stays_below_the_level(
    counts: tuple[int, int], p: float, alpha: float
) -> None:
    hits, n = counts
    level = float(log_mixture(p, hits, n)) - np.log(1 / alpha)
    interval = mean_interval(float(hits), n, alpha)
    if level < -1e-6:
        assert interval.contains(p)
    elif level > 1e-6:
        assert not interval.contains(p)


def test_quantile_ranks_bracket_the_p95_at_every_look() -> None:
    alpha, paths = 0.1, 60
    rng = np.random.default_rng(3)
    true_p95 = float(np.exp(1.6448536269514722 * 0.5))  # lognormal(0, 0.5)
    misses = 0
    for _ in range(paths):
        values = rng.lognormal(0, 0.5, 600)
        for n in range(20, 601, 20):
            ordered = np.sort(values[:n])
            low, high = quantile_ranks(n, 0.95, alpha)
            below = ordered[low - 1] if low is not None else 0.0
            above = ordered[high - 1] if high is not None else float("inf")
            if not below <= true_p95 <= above:
                misses += 1
                break
    assert misses / paths <= alpha


def test_intervals_narrow_as_samples_grow() -> None:
    widths = [mean_interval(0.3 * n, n, 0.05) for n in (10, 100, 1000, 10_000)]
    spans = [i.high - i.low for i in widths]
    assert spans == sorted(spans, reverse=True)
    assert spans[-1] < 0.05 < spans[0]
    assert mean_interval(0.0, 0, 0.05) == Interval(0.0, 1.0)


def test_quantile_ranks_need_enough_samples_above_the_quantile() -> None:
    assert quantile_ranks(0, 0.95, 0.05) == (None, None)
    low, high = quantile_ranks(20, 0.95, 0.05)
    assert high is None  # 20 requests cannot bound a p95 from above
    low, high = quantile_ranks(2000, 0.95, 0.05)
    assert low is not None and high is not None
    assert low < 0.95 * 2000 < high <= 2000


def test_split_and_difference() -> None:
    assert split(0.05, 10) == pytest.approx(0.005)
    assert split(0.05, 0) == 0.05
    gap = difference(Interval(0.04, 0.06), Interval(0.01, 0.02))
    assert gap.low == pytest.approx(0.02) and gap.high == pytest.approx(0.05)
    with pytest.raises(ValueError, match="low <= high"):
        Interval(0.5, 0.4)
    with pytest.raises(ValueError, match="alpha"):
        mean_interval(1.0, 2, 0.0)


# --- properties of the pure gate functions ------------------------------------------------------

counts = st.integers(0, 5000)
alphas = st.sampled_from([0.001, 0.01, 0.05, 0.2])


@st.composite
def tallies(draw: st.DrawFn) -> Tally:
    total = draw(st.integers(0, 5000))
    return Tally(float(draw(st.integers(0, total))), total)


@settings(max_examples=150, deadline=None)
@given(tallies(), alphas)
def test_the_interval_holds_the_estimate_inside_zero_one(t: Tally, alpha: float) -> None:
    interval = mean_interval(t.hits, t.total, alpha)
    assert 0.0 <= interval.low <= interval.high <= 1.0
    if t.value is not None:
        assert interval.contains(t.value)


@settings(max_examples=100, deadline=None)
@given(tallies(), st.sampled_from([0.01, 0.05]), st.sampled_from([0.1, 0.3]))
def test_a_lower_alpha_never_narrows_the_interval(t: Tally, small: float, large: float) -> None:
    wide, narrow = mean_interval(t.hits, t.total, small), mean_interval(t.hits, t.total, large)
    assert wide.low <= narrow.low + 1e-9 and narrow.high <= wide.high + 1e-9


@settings(max_examples=150, deadline=None)
@given(tallies(), tallies(), st.floats(0.0, 1.0), alphas)
def test_a_rate_gate_passes_or_fails_only_where_its_interval_says(
    c: Tally, s: Tally, limit: float, alpha: float
) -> None:
    result = rate_gate(GateName.ERROR_RATE, c, s, limit, "", alpha)
    if c.total == 0 or s.total == 0:
        assert result.verdict is Verdict.INCONCLUSIVE
        return
    assert result.low is not None and result.high is not None
    assert result.low <= (c.hits / c.total) - (s.hits / s.total) + 1e-9 <= result.high + 2e-9
    assert result.verdict is at_most(Interval(result.low, result.high), limit)
    if result.verdict is Verdict.PASS:
        assert result.high <= limit + 1e-9
    if result.verdict is Verdict.FAIL:
        assert result.low > limit
    assert result.detail.startswith("candidate error rate")


@settings(max_examples=100, deadline=None)
@given(tallies(), tallies(), alphas)
def test_a_rate_gate_is_never_decided_below_the_floor(c: Tally, s: Tally, alpha: float) -> None:
    few = "too few samples: 1 candidate and 1 stable, 100 needed"
    result = rate_gate(GateName.ERROR_RATE, c, s, 0.02, few, alpha)
    assert (result.verdict, result.detail) == (Verdict.INCONCLUSIVE, few)


@settings(max_examples=150, deadline=None)
@given(tallies(), st.floats(0.0, 1.0), alphas, st.integers(1, 50))
def test_agreement_passes_only_above_its_floor(
    scores: Tally, floor: float, alpha: float, need: int
) -> None:
    result = agreement_gate(scores, floor, need, alpha, "the category field")
    if scores.total < need:
        assert result.verdict is Verdict.INCONCLUSIVE
        return
    assert result.low is not None and result.high is not None
    assert result.verdict is at_least(Interval(result.low, result.high), floor)
    if result.verdict is not Verdict.INCONCLUSIVE:
        # A decided gate's interval excludes the floor.
        assert not result.low < floor - 1e-9 < result.high


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20_000), st.sampled_from([0.5, 0.9, 0.95, 0.99]), st.floats(0.0001, 0.4))
def test_quantile_ranks_search_finds_every_allowed_count(n: int, q: float, alpha: float) -> None:
    """The windowed search gives the ranks the whole range of counts would."""
    allowed = np.flatnonzero(log_mixture(q, np.arange(n + 1, dtype=float), n) < np.log(1 / alpha))
    fewest, most = int(allowed[0]), int(allowed[-1])
    expected = (fewest if fewest >= 1 else None, most + 1 if most + 1 <= n else None)
    assert quantile_ranks(n, q, alpha) == expected
