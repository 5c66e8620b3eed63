"""The drift statistics (``service.drift.statistics``): scores, bins, statuses, and how often
unchanged traffic raises an alarm. Pure; the random draws use fixed seeds, so every run sees the
same data."""

from __future__ import annotations

import numpy as np
import pytest

from service.drift.statistics import (
    OTHER,
    Bands,
    MinSamples,
    Status,
    bin_index,
    category_bins,
    chi2_p_value,
    compare_categories,
    compare_numbers,
    edges_from,
    js_distance,
    number_labels,
    psi,
    quantile_ranks,
    status_of,
    worst,
)

BANDS = Bands(0.1, 0.2)
EVERY = MinSamples(1, 1)


def test_psi_is_zero_for_equal_shares_and_finite_with_empty_bins() -> None:
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=0.01)
    assert psi([100, 0, 0], [0, 0, 100]) > 2  # add-one smoothing: large, never infinite
    assert np.isfinite(psi([0, 0, 5], [5, 0, 0]))
    with pytest.raises(ValueError, match="aligned"):
        psi([1, 2], [1, 2, 3])


def test_js_distance_runs_from_zero_for_equal_shares_to_one_for_disjoint_ones() -> None:
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-9)
    assert js_distance([10, 0], [0, 10]) == pytest.approx(1.0)
    assert 0.2 < js_distance([80, 20, 0], [50, 20, 30]) < 0.5
    with pytest.raises(ValueError, match="empty"):
        js_distance([0, 0], [1, 1])


def test_the_chi_square_p_value_needs_enough_expected_counts() -> None:
    assert chi2_p_value([1, 2], [2, 1]) is None  # expected counts far under Cochran's rule
    assert chi2_p_value([5], [7]) is None  # one bin: nothing to compare
    same = chi2_p_value([200, 300, 500], [100, 150, 250])
    shifted = chi2_p_value([200, 300, 500], [250, 150, 100])
    assert same is not None and same > 0.9
    assert shifted is not None and shifted < 1e-6


def test_quantile_bins_come_from_the_reference() -> None:
    assert quantile_ranks(100, 10) == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert quantile_ranks(3, 10) == [0, 1, 2]
    assert quantile_ranks(0, 10) == []
    assert edges_from([5, 1, 5, 3, float("nan")]) == (1.0, 3.0, 5.0)
    assert number_labels((1.0, 3.0)) == ("< 1", "[1, 3)", ">= 3")
    assert number_labels(()) == ("all",)
    assert [bin_index(v, (1.0, 3.0)) for v in (0.5, 1.0, 2.9, 3.0, 99)] == [0, 1, 1, 2, 2]


def test_a_category_the_reference_never_saw_gets_a_bin_of_its_own() -> None:
    labels, ref, cur = category_bins({"a": 50, "b": 30}, {"a": 20, "new": 40})
    assert labels == ("a", "b", "new") and ref == [50, 30, 0] and cur == [20, 0, 40]
    many = {f"c{i:02}": 100 - i for i in range(30)}
    labels, ref, cur = category_bins(many, {})
    assert len(labels) == 20 and labels[-1] == OTHER and sum(ref) == sum(many.values())


def test_status_bands_and_too_few_samples() -> None:
    assert status_of(0.05, BANDS, enough=True) is Status.OK
    assert status_of(0.1, BANDS, enough=True) is Status.WARN
    assert status_of(0.2, BANDS, enough=True) is Status.DRIFT
    assert status_of(5.0, BANDS, enough=False) is Status.INSUFFICIENT
    assert status_of(None, BANDS, enough=True) is Status.INSUFFICIENT
    assert worst([Status.OK, Status.INSUFFICIENT, Status.WARN]) is Status.WARN
    assert worst([Status.INSUFFICIENT]) is Status.INSUFFICIENT
    with pytest.raises(ValueError, match="bands"):
        Bands(0.3, 0.2)


def test_below_the_minimum_sample_count_a_clear_shift_is_insufficient_never_ok() -> None:
    minimum = MinSamples(100, 100)
    few = compare_categories("c", {"a": 500}, {"b": 50}, BANDS, minimum)
    assert few.status is Status.INSUFFICIENT and few.score == pytest.approx(1.0)
    empty = compare_numbers("n", (1.0,), [50, 50], [0, 0], BANDS, minimum)
    assert empty.status is Status.INSUFFICIENT and empty.score is None
    ok = compare_numbers("n", (1.0,), [500, 500], [100, 100], BANDS, minimum)
    assert ok.status is Status.OK and ok.current_n == 200 and ok.reference_n == 1000


# --- unchanged traffic: how often does it raise an alarm? ------------------------------------

CATEGORIES = ["billing", "technical", "account", "shipping", "other"]
SHARES = [0.4, 0.25, 0.15, 0.12, 0.08]


def _numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.lognormal(4.0, 0.6, n))  # token counts: skewed, with ties


def _categories(rng: np.random.Generator, n: int, shares: list[float]) -> dict[str, int]:
    values, counts = np.unique(rng.choice(CATEGORIES, n, p=shares), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def _reference(rng: np.random.Generator, n: int) -> tuple[tuple[float, ...], list[int]]:
    values = np.sort(_numbers(rng, n))
    edges = edges_from([values[r] for r in quantile_ranks(n, 10)])
    return edges, np.bincount(
        np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
    ).tolist()


def test_unchanged_traffic_almost_never_warns_and_never_drifts() -> None:
    """500 windows of 200 values (the default minimum) against a 1,000-value reference, all
    from one distribution. With this seed numbers warn in 11 % of the windows (55 of 500),
    categories in 5 % (25), and neither ever reaches drift; ``bench/drift_false_alarms.py``
    measures the rates over many more draws."""
    rng = np.random.default_rng(7)
    edges, ref_numbers = _reference(rng, 1000)
    ref_categories = _categories(rng, 1000, SHARES)
    minimum = MinSamples(200, 200)
    statuses: dict[str, list[Status]] = {"number": [], "category": []}
    for _ in range(500):
        values = _numbers(rng, 200)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        number = compare_numbers("n", edges, ref_numbers, counts.tolist(), BANDS, minimum)
        category = compare_categories(
            "c", ref_categories, _categories(rng, 200, SHARES), BANDS, minimum
        )
        statuses["number"].append(number.status)
        statuses["category"].append(category.status)
    for seen in statuses.values():
        assert Status.DRIFT not in seen and Status.INSUFFICIENT not in seen
        assert seen.count(Status.WARN) / len(seen) < 0.2


def test_a_clear_shift_drifts_in_every_window() -> None:
    rng = np.random.default_rng(11)
    edges, ref_numbers = _reference(rng, 1000)
    ref_categories = _categories(rng, 1000, SHARES)
    minimum = MinSamples(200, 200)
    for _ in range(50):
        longer = _numbers(rng, 200) * 2.5
        counts = np.bincount(np.searchsorted(edges, longer, side="right"), minlength=len(edges) + 1)
        assert compare_numbers("n", edges, ref_numbers, counts.tolist(), BANDS, minimum).status is (
            Status.DRIFT
        )
        moved = _categories(rng, 200, [0.1, 0.2, 0.15, 0.15, 0.4])
        assert compare_categories("c", ref_categories, moved, BANDS, minimum).status is Status.DRIFT
