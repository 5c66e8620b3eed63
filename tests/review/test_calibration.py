"""The calibration figures and the threshold proposal (``service.review.calibration``), pure."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from service.review.calibration import (
    BINS,
    Outcome,
    Verdict,
    calibration,
    field_outcomes,
    needed,
    propose_threshold,
)

CONFIDENCES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def ece_bound(n: int, delta: float = 1e-9, bins: int = BINS) -> float:
    """What the ECE of a calibrated predictor stays under with probability 1 - delta: by
    Hoeffding per bin (given the confidences) and a union bound over the bins,
    sum_b (n_b / n) sqrt(ln(2 bins / delta) / (2 n_b)) <= sqrt(bins ln(2 bins / delta) / (2 n))."""
    return math.sqrt(bins * math.log(2 * bins / delta) / (2 * n))


def calibrated(seed: int, n: int, shift: float = 0.0) -> list[Outcome]:
    """Answers right with probability p, reported with confidence p + shift (clipped)."""
    rng = random.Random(seed)
    found = []
    for _ in range(n):
        p = rng.random()
        found.append(Outcome(min(1.0, max(0.0, p + shift)), rng.random() < p))
    return found


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_a_calibrated_predictor_has_a_small_ece_and_an_overconfident_one_does_not(
    seed: int,
) -> None:
    n = 20_000
    bound = ece_bound(n)
    figures = calibration(calibrated(seed, n))
    assert figures is not None and figures.ece <= bound
    # Confidence 0.25 above the truth: the gap is about 0.22 (less where clipped at 1).
    sure = calibration(calibrated(seed, n, shift=0.25))
    assert sure is not None and sure.ece > 2 * bound


@given(
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.integers(min_value=1, max_value=500),
    st.data(),
)
def test_a_constant_predictor_scores_the_known_brier(c: float, n: int, data: st.DataObject) -> None:
    right = data.draw(st.integers(min_value=0, max_value=n))
    figures = calibration([Outcome(c, i < right) for i in range(n)])
    a = right / n
    assert figures is not None
    assert math.isclose(figures.brier, a * (1 - c) ** 2 + (1 - a) * c**2, abs_tol=1e-12)
    assert math.isclose(figures.ece, abs(a - c), abs_tol=1e-12)  # one bin holds them all


@given(st.lists(st.tuples(CONFIDENCES, st.booleans()), min_size=1, max_size=200))
def test_figures_are_bounded_and_the_bins_hold_every_outcome(
    pairs: list[tuple[float, bool]],
) -> None:
    figures = calibration([Outcome(c, r) for c, r in pairs])
    assert figures is not None
    assert 0.0 <= figures.ece <= 1.0 and 0.0 <= figures.brier <= 1.0
    assert sum(b.count for b in figures.bins) == len(pairs) == figures.n
    for b in figures.bins:
        if b.count:
            assert b.mean_confidence is not None and b.low <= b.mean_confidence <= b.high
    assert calibration([]) is None


def test_fields_a_reviewer_changed_were_wrong_and_the_rest_right() -> None:
    answer = '{"category": "billing", "urgency": 2, "tags": ["a"]}'
    scores = {"/category": 0.4, "/urgency": 0.9, "/tags/0": 0.7}
    corrected = '{"category": "bug", "urgency": 2, "tags": ["a"]}'
    assert field_outcomes("corrected", answer, corrected, scores) == [
        Outcome(0.4, False), Outcome(0.9, True), Outcome(0.7, True),
    ]  # fmt: skip
    assert field_outcomes("approved", answer, None, scores) == [
        Outcome(0.4, True), Outcome(0.9, True), Outcome(0.7, True),
    ]  # fmt: skip
    assert field_outcomes("rejected", answer, None, scores) == []
    assert field_outcomes("corrected", answer, "not json", scores) == []


def test_needed_answers_shrink_as_the_target_nears_certainty() -> None:
    assert needed(0.9) == 139  # 1.96^2 * 0.9 * 0.1 / 0.05^2 = 138.3
    assert needed(0.5) == 385
    assert needed(0.99) == 16


def stepped(seed: int, n: int, cut: float, wrong_below: float, wrong_above: float) -> list[Outcome]:
    """Answers wrong with probability ``wrong_below`` under ``cut``, else ``wrong_above``."""
    rng = random.Random(seed)
    found = []
    for _ in range(n):
        c = rng.random()
        wrong = rng.random() < (wrong_below if c < cut else wrong_above)
        found.append(Outcome(c, not wrong))
    return found


def test_the_proposal_escalates_where_answers_are_mostly_wrong_and_holds_on_held_out() -> None:
    fit, check = stepped(1, 2000, 0.3, 0.97, 0.2), stepped(2, 2000, 0.3, 0.97, 0.2)
    proposal = propose_threshold(fit, check, 0.9)
    assert proposal.verdict is Verdict.PROPOSED and proposal.threshold is not None
    # Past the step, precision falls fast (0.2 wrong above 0.3): the threshold stays near it.
    assert 0.28 <= proposal.threshold <= 0.45
    assert proposal.fit_precision is not None and proposal.fit_precision >= 0.9
    held = proposal.held_out
    assert held is not None and held.low is not None and held.high is not None
    assert held.n >= needed(0.9) and held.low <= 0.97 and held.high >= 0.9


def test_too_few_reviewed_answers_says_how_many_are_needed() -> None:
    few = stepped(3, 100, 0.3, 1.0, 0.0)
    proposal = propose_threshold(few[:50], few[50:], 0.9)
    assert proposal.verdict is Verdict.TOO_FEW and proposal.threshold is None
    assert (proposal.reviewed, proposal.needed) == (100, 139)


def test_a_version_whose_unsure_answers_are_mostly_right_gets_no_threshold() -> None:
    fit, check = stepped(4, 1000, 0.5, 0.4, 0.1), stepped(5, 1000, 0.5, 0.4, 0.1)
    proposal = propose_threshold(fit, check, 0.9)
    assert proposal.verdict is Verdict.UNREACHABLE and proposal.threshold is None
    assert proposal.best_precision is not None and proposal.best_precision < 0.9
