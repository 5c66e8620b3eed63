"""The output_drift gate: how far the candidate's answer categories moved from stable's. Pure.

The point estimate is the Jensen-Shannon distance (base 2) of the two arms' value counts, as the
drift monitor scores it. Its interval is built without a permutation test: each category's share
gets a confidence sequence on each arm (the arm's share of ``alpha`` split over the categories
either arm has answered), and the distance is bounded over every pair of distributions those
intervals allow:

- below, by the larger of two bounds: the data-processing inequality (merging categories never
  raises the divergence), so each category's share alone, "this category or not", gives a
  binary Jensen-Shannon divergence, least at the closest ends of the two arms' intervals; and
  the total variation distance ``TV`` the intervals force (each category's gap between the
  arms' intervals) through Pinsker's inequality on both halves of the divergence:
  ``JSD >= TV^2 / (2 ln 2)`` bits, so ``JS distance >= TV / sqrt(2 ln 2)``;
- above, by the triangular discrimination: ``JSD <= sum_k (p_k - q_k)^2 / (p_k + q_k) / (2 ln 2)``
  bits (each KL term is at most its chi-square), each term maximised over its category's box
  (a convex function: its maximum is at a corner).

What it guarantees: with probability at least ``1 - alpha`` the true distance lies in the
interval at every analysis, so a ``fail`` (the lower bound over the limit) is a real move of the
category mix. The bounds are loose, the upper one most: a ``pass`` needs many answers per arm
(hundreds per category), so with few answers this gate stays undecided rather than passing.
The guarantee assumes the categories are fixed in advance (the route's schema enum); categories
that first appear late in a step take a share of ``alpha`` from then on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
from scipy.spatial.distance import jensenshannon

from rollout.core import wording
from rollout.core.figures import Window
from rollout.core.sequential import Interval, rate_interval, split
from rollout.core.spec import GateName
from rollout.core.verdicts import GateResult, Verdict, at_most
from service.drift.statistics import category_bins, js_distance

# 2 ln 2: converts the nats of Pinsker's and the chi-square bound into bits.
TWO_LN2 = 2 * math.log(2)


def output_drift(w: Window, limit: float, need: int, alpha: float) -> GateResult:
    """The field whose distance interval is worst (highest lower bound, then highest estimate),
    over the fields both arms answered ``need`` times."""
    gate = GateName.OUTPUT_DRIFT
    found: list[tuple[str, float, Interval, int, int]] = []
    for name in sorted(set(w.candidate.output_fields) | set(w.stable.output_fields)):
        cand = w.candidate.output_fields.get(name, {})
        stable = w.stable.output_fields.get(name, {})
        nc, ns = sum(cand.values()), sum(stable.values())
        if min(nc, ns) < need:
            continue
        _, stable_counts, cand_counts = category_bins(stable, cand)
        distance = js_distance(stable_counts, cand_counts)
        found.append((name, distance, distance_interval(cand, stable, alpha), nc, ns))
    if not found:
        return GateResult(
            gate, Verdict.INCONCLUSIVE, None, None, limit,
            f"too few answers: no answer field with {need} values on both arms", alpha=alpha,
        )  # fmt: skip
    name, distance, judged, nc, ns = max(found, key=lambda f: (f[2].low, f[1]))
    verdict = at_most(judged, limit)
    return GateResult(
        gate, verdict, distance, None, limit,
        wording.drift(name, distance, judged, limit, verdict, nc, ns),
        low=judged.low, high=judged.high, candidate_samples=nc, stable_samples=ns, alpha=alpha,
    )  # fmt: skip


def distance_interval(
    candidate: Mapping[str, int], stable: Mapping[str, int], alpha: float
) -> Interval:
    """Bounds on the Jensen-Shannon distance (base 2) between the arms' category shares."""
    categories = sorted(set(candidate) | set(stable))
    each = split(alpha / 2, len(categories))
    nc, ns = sum(candidate.values()), sum(stable.values())
    gaps: list[float] = []
    binary = 0.0
    upper = 0.0
    for category in categories:
        p = rate_interval(candidate.get(category, 0), nc, each)
        q = rate_interval(stable.get(category, 0), ns, each)
        gaps.append(max(p.low - q.high, q.low - p.high, 0.0))
        if p.low > q.high:
            binary = max(binary, _binary_jsd(p.low, q.high))
        elif q.low > p.high:
            binary = max(binary, _binary_jsd(p.high, q.low))
        upper += max(
            _triangular(a, b) for a, b in itertools.product((p.low, p.high), (q.low, q.high))
        )
    tv_low = max(sum(gaps) / 2, max(gaps, default=0.0))
    low = min(1.0, max(tv_low / math.sqrt(TWO_LN2), math.sqrt(binary)))
    high = min(1.0, math.sqrt(upper / TWO_LN2))
    return Interval(min(low, high), high)


def _binary_jsd(p: float, q: float) -> float:
    """The Jensen-Shannon divergence (bits) of two coins with these chances of heads."""
    return float(jensenshannon(np.array([p, 1 - p]), np.array([q, 1 - q]), base=2) ** 2)


def _triangular(p: float, q: float) -> float:
    return (p - q) ** 2 / (p + q) if p + q > 0 else 0.0
