"""Drift statistics, pure: a reference histogram against a current one, scored and judged.

Numbers are binned at the reference's quantiles and scored with the population stability index
(PSI), each bin's count plus one so that an empty bin cannot make it infinite. Categories are
scored with the Jensen-Shannon distance (base 2, so between 0 and 1). Both also get a
chi-square test of homogeneity on the same bins, sparse bins pooled until the counts allow one
(Cochran's rule): only bin counts ever leave the database, so a Kolmogorov-Smirnov test on raw
values is not available.

A score's band (``warn`` and ``drift``) says how large a change is; too few samples on either
side is ``insufficient``, never ``ok``. A route is judged as a whole (``judge_route``): its
features' p-values are corrected together (Holm), and a feature over a band reads ``warn`` or
``drift`` only when its corrected p-value is under the route's false-alarm rate, so unchanged
traffic flags a route in at most that share of windows, however many features it has.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from scipy.special import chdtrc

# Past this many categories, the rarest (by reference count, then current) share one bin.
MAX_CATEGORIES = 20
OTHER = "(other)"
# Cochran's rule for a chi-square test: every expected count at least 1, four in five at least 5.
MIN_EXPECTED = 1.0
MIN_EXPECTED_MOST = 5.0
MOST = 0.8


class Kind(StrEnum):
    NUMBER = "number"
    CATEGORY = "category"


class Statistic(StrEnum):
    PSI = "psi"
    JS = "js"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    DRIFT = "drift"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True, slots=True)
class Bands:
    """A score at or over ``warn`` is ``warn``; at or over ``drift`` it is ``drift``."""

    warn: float
    drift: float

    def __post_init__(self) -> None:
        if not 0 < self.warn <= self.drift:
            raise ValueError("drift bands need 0 < warn <= drift")


@dataclass(frozen=True, slots=True)
class Bin:
    label: str
    count: int
    share: float


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    name: str
    kind: Kind
    statistic: Statistic
    score: float | None  # None when either side has no samples at all
    p_value: float | None  # None when the counts do not allow a chi-square test
    status: Status
    bands: Bands
    reference: tuple[Bin, ...]
    current: tuple[Bin, ...]
    # The p-value corrected across the route's features (Holm); None until judge_route ran, or
    # when the feature was not tested (insufficient, or a single bin).
    adjusted_p: float | None = None

    @property
    def reference_n(self) -> int:
        return sum(b.count for b in self.reference)

    @property
    def current_n(self) -> int:
        return sum(b.count for b in self.current)


# --- bins -----------------------------------------------------------------------------------


def quantile_ranks(n: int, bins: int) -> list[int]:
    """The 0-based ranks, among ``n`` sorted values, of the inner quantile edges of ``bins``
    equal-count bins (``bins - 1`` of them; fewer when ``n`` is small)."""
    if n <= 0 or bins < 2:
        return []
    return sorted({min(n - 1, (k * n) // bins) for k in range(1, bins)})


def edges_from(quantiles: Sequence[float]) -> tuple[float, ...]:
    """Bin edges from quantile values: sorted, each once (ties collapse bins)."""
    return tuple(sorted({float(q) for q in quantiles if math.isfinite(q)}))


def number_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """One label per bin: ``< e1``, ``[e1, e2)``, ..., ``>= ek`` (a single ``all`` bin
    without edges)."""
    if not edges:
        return ("all",)
    inner = [f"[{_num(lo)}, {_num(hi)})" for lo, hi in itertools.pairwise(edges)]
    return (f"< {_num(edges[0])}", *inner, f">= {_num(edges[-1])}")


def bin_index(value: float, edges: Sequence[float]) -> int:
    """The bin of ``value``: bin i holds [edges[i-1], edges[i]) (the SQL query does the same)."""
    return int(np.searchsorted(np.asarray(edges, dtype=float), value, side="right"))


def _num(value: float) -> str:
    return f"{value:.4g}"


def _bins(labels: Sequence[str], counts: Sequence[int]) -> tuple[Bin, ...]:
    total = sum(counts)
    return tuple(
        Bin(label, int(c), (c / total) if total else 0.0)
        for label, c in zip(labels, counts, strict=True)
    )


def category_bins(
    reference: Mapping[str, int], current: Mapping[str, int], limit: int = MAX_CATEGORIES
) -> tuple[tuple[str, ...], list[int], list[int]]:
    """Aligned labels and counts for both sides: the reference's most frequent categories
    first, then the current window's new ones; past ``limit`` the rest share ``(other)``."""
    labels = sorted(
        set(reference) | set(current),
        key=lambda c: (-reference.get(c, 0), -current.get(c, 0), c),
    )
    kept, rest = labels[: limit - 1], labels[limit - 1 :]
    if len(rest) <= 1:
        kept, rest = labels, []
    ref = [reference.get(c, 0) for c in kept]
    cur = [current.get(c, 0) for c in kept]
    if rest:
        kept.append(OTHER)
        ref.append(sum(reference.get(c, 0) for c in rest))
        cur.append(sum(current.get(c, 0) for c in rest))
    return tuple(kept), ref, cur


# --- scores ---------------------------------------------------------------------------------


def psi(reference: Sequence[int], current: Sequence[int]) -> float:
    """Population stability index over aligned bins, with add-one smoothing."""
    ref = np.asarray(reference, dtype=float) + 1.0
    cur = np.asarray(current, dtype=float) + 1.0
    if ref.shape != cur.shape or ref.size == 0:
        raise ValueError("psi needs two aligned, non-empty count vectors")
    p, q = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: Sequence[int], current: Sequence[int]) -> float:
    """Jensen-Shannon distance (base 2: 0 for equal shares, 1 for disjoint ones)."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    if ref.shape != cur.shape or ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("js_distance needs two aligned count vectors, neither empty")
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2
    divergence = (_kl(p, m) + _kl(q, m)) / 2
    return float(math.sqrt(max(0.0, divergence)))


def _kl(p: np.ndarray, m: np.ndarray) -> float:
    seen = p > 0
    return float(np.sum(p[seen] * np.log2(p[seen] / m[seen])))


def chi2_p_value(
    reference: Sequence[int], current: Sequence[int], *, ordered: bool = False
) -> float | None:
    """p-value of a chi-square test that both samples come from one distribution over these
    bins. Bins whose expected counts are under Cochran's rule are pooled first, the sparsest
    into a neighbour (``ordered`` bins, i.e. number bins) or into the next sparsest (categories);
    None when fewer than two bins are left, or a side is empty."""
    table = np.asarray([reference, current], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if (table.sum(axis=1) <= 0).any():
        return None
    while table.shape[1] >= 2:
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
        if expected.min() >= MIN_EXPECTED and (expected >= MIN_EXPECTED_MOST).mean() >= MOST:
            statistic = float(np.sum((table - expected) ** 2 / expected))
            return float(chdtrc(table.shape[1] - 1, statistic))
        table = _pool_sparsest(table, ordered=ordered)
    return None


def _pool_sparsest(table: np.ndarray, *, ordered: bool) -> np.ndarray:
    """The table with its sparsest bin added to another: its smaller neighbour when bins are
    ordered, else the next sparsest bin."""
    totals = table.sum(axis=0)
    order = np.argsort(totals, kind="stable")
    low = int(order[0])
    if ordered:
        neighbours = [i for i in (low - 1, low + 1) if 0 <= i < table.shape[1]]
        into = min(neighbours, key=lambda i: totals[i])
    else:
        into = int(order[1])
    pooled = table.copy()
    pooled[:, into] += pooled[:, low]
    return np.delete(pooled, low, axis=1)


def status_of(score: float | None, bands: Bands, *, enough: bool) -> Status:
    if not enough or score is None:
        return Status.INSUFFICIENT
    if score >= bands.drift:
        return Status.DRIFT
    return Status.WARN if score >= bands.warn else Status.OK


# --- one feature ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MinSamples:
    reference: int
    current: int

    def enough(self, reference_n: int, current_n: int) -> bool:
        return reference_n >= max(1, self.reference) and current_n >= max(1, self.current)


def compare_numbers(
    name: str,
    edges: Sequence[float],
    reference: Sequence[int],
    current: Sequence[int],
    bands: Bands,
    minimum: MinSamples,
) -> FeatureDrift:
    """A number feature: counts per bin of the reference's quantile ``edges`` on both sides."""
    labels = number_labels(edges)
    if not len(labels) == len(reference) == len(current):
        raise ValueError(f"{name}: {len(edges)} edges need {len(labels)} counts on each side")
    ref_n, cur_n = sum(reference), sum(current)
    score = psi(reference, current) if ref_n and cur_n else None
    return FeatureDrift(
        name, Kind.NUMBER, Statistic.PSI, score, chi2_p_value(reference, current, ordered=True),
        status_of(score, bands, enough=minimum.enough(ref_n, cur_n)), bands,
        _bins(labels, reference), _bins(labels, current),
    )  # fmt: skip


def compare_categories(
    name: str,
    reference: Mapping[str, int],
    current: Mapping[str, int],
    bands: Bands,
    minimum: MinSamples,
) -> FeatureDrift:
    """A category feature: a category the reference never saw is a bin of its own."""
    labels, ref, cur = category_bins(reference, current)
    ref_n, cur_n = sum(ref), sum(cur)
    score = js_distance(ref, cur) if ref_n and cur_n else None
    return FeatureDrift(
        name, Kind.CATEGORY, Statistic.JS, score, chi2_p_value(ref, cur),
        status_of(score, bands, enough=minimum.enough(ref_n, cur_n)), bands,
        _bins(labels, ref), _bins(labels, cur),
    )  # fmt: skip


# Worst first: a feature that drifted matters more than one with too few values to say.
SEVERITY = (Status.DRIFT, Status.WARN, Status.OK, Status.INSUFFICIENT)


def worst(statuses: Sequence[Status]) -> Status:
    """The status a set of features reads as at a glance: drift over warn over ok; all
    insufficient (or none) is insufficient."""
    return next((s for s in SEVERITY if s in statuses), Status.INSUFFICIENT)


# --- a route as a whole ---------------------------------------------------------------------

# Unchanged traffic may flag a route (some feature at warn or drift) in at most this share of
# windows; bench/drift_false_alarms.py measures it.
FALSE_ALARM_RATE = 0.01


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the given order): rejecting those at or under
    ``alpha`` wrongly rejects any of them with probability at most ``alpha``."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True, slots=True)
class RouteJudgement:
    """The route's features, judged together, and what the judgement rests on."""

    features: tuple[FeatureDrift, ...]
    false_alarm_rate: float
    tested: int  # features with enough values and a test
    p_value: float | None  # the smallest adjusted p-value: the route's own; None if none tested

    @property
    def status(self) -> Status:
        return worst([f.status for f in self.features])


def judge_route(
    features: Sequence[FeatureDrift], false_alarm_rate: float = FALSE_ALARM_RATE
) -> RouteJudgement:
    """Correct the features' p-values across the route (Holm) and keep a feature's band
    (``warn`` or ``drift``) only where its adjusted p-value is at most ``false_alarm_rate``;
    a score over a band that chance explains reads ``ok``."""
    if not 0 < false_alarm_rate < 1:
        raise ValueError("the false-alarm rate is a share between 0 and 1")
    tested = [
        i
        for i, f in enumerate(features)
        if f.status is not Status.INSUFFICIENT and f.p_value is not None
    ]
    adjusted = dict(zip(tested, holm([features[i].p_value or 0.0 for i in tested]), strict=True))
    judged: list[FeatureDrift] = []
    for i, f in enumerate(features):
        q = adjusted.get(i)
        status = f.status
        if status in (Status.WARN, Status.DRIFT) and (q is None or q > false_alarm_rate):
            status = Status.OK
        judged.append(replace(f, status=status, adjusted_p=q))
    return RouteJudgement(
        tuple(judged), false_alarm_rate, len(tested), min(adjusted.values(), default=None)
    )
