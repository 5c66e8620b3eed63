"""Whether a version's confidence means what it says, judged by reviewers' decisions. Pure.

Each reviewed answer (or field) is an *outcome*: its confidence and whether the reviewer left it
as it was (right) or changed it (wrong). Over the outcomes of one version:

- **Brier score**: the mean of (confidence - right)^2, 0 for a perfect and sure predictor; a
  constant confidence c over answers right with rate a scores a(1-c)^2 + (1-a)c^2.
- **Reliability diagram**: the outcomes in ``BINS`` equal-width confidence bins, each with its
  count, mean confidence and observed accuracy.
- **Expected calibration error (ECE)**: the count-weighted mean of |accuracy - mean confidence|
  over those bins (Guo et al., "On Calibration of Modern Neural Networks", 2017). Bins of few
  outcomes make it noisy: with n outcomes it is biased upwards by about sqrt(BINS / n) / 2 even
  for a perfectly calibrated predictor.

``propose_threshold`` fits an escalation threshold ("review answers under t") on one half of the
reviewed answers and measures it on the other half, so the precision it reports was not used to
choose it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from service.guard.picks import segments
from service.review.agreement import Z_95, Proportion, wilson

BINS = 10
# A proposal needs enough escalated answers in the fit half for the precision's 95 % interval
# to be this narrow at the target.
MARGIN = 0.05
MIN_ESCALATED = 10


@dataclass(frozen=True, slots=True)
class Outcome:
    confidence: float  # in [0, 1]
    right: bool  # the reviewer kept it (approved), not changed it (corrected, rejected)


@dataclass(frozen=True, slots=True)
class Bin:
    low: float
    high: float
    count: int
    mean_confidence: float | None  # None for an empty bin
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class Calibration:
    n: int
    accuracy: float
    mean_confidence: float
    ece: float
    brier: float
    bins: tuple[Bin, ...]


KEPT = "approved"
CHANGED = ("corrected", "rejected")


def answer_outcome(state: str, confidence: float) -> Outcome:
    """A decided answer: right when approved, wrong when corrected or rejected."""
    return Outcome(confidence, state == KEPT)


_MISSING = object()


def _at(document: Any, pointer: str) -> Any:
    """The value at a JSON pointer, or ``_MISSING``."""
    value = document
    for segment in segments(pointer):
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            return _MISSING
    return value


def _json(text: str | None) -> Any:
    if text is None:
        return _MISSING
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _MISSING


def field_outcomes(
    state: str, answer: str | None, corrected: str | None, scores: Mapping[str, float] | None
) -> list[Outcome]:
    """The fields of a decided answer: every field of an approved answer was right; of a
    corrected one, a field the reviewer changed was wrong and one left alike was right. A
    rejected answer, or a correction that is not JSON, says nothing about single fields."""
    if not scores or state not in (KEPT, "corrected"):
        return []
    if state == KEPT:
        return [Outcome(score, True) for score in scores.values()]
    before, after = _json(answer), _json(corrected)
    if before is _MISSING or after is _MISSING:
        return []
    return [
        Outcome(score, _at(before, pointer) == _at(after, pointer))
        for pointer, score in scores.items()
    ]


def in_check_half(item_id: str) -> bool:
    """Which half a reviewed answer falls in, fixed by its id: threshold fits use the other."""
    return hashlib.sha256(item_id.encode()).digest()[0] % 2 == 1


def bin_of(confidence: float, bins: int = BINS) -> int:
    """The bin index of a confidence: [k/bins, (k+1)/bins), the last bin closed at 1."""
    return min(bins - 1, max(0, math.floor(confidence * bins)))


def calibration(outcomes: Sequence[Outcome], bins: int = BINS) -> Calibration | None:
    """ECE, Brier score and reliability bins of ``outcomes``; None when there are none."""
    n = len(outcomes)
    if n == 0:
        return None
    grouped: list[list[Outcome]] = [[] for _ in range(bins)]
    for outcome in outcomes:
        grouped[bin_of(outcome.confidence, bins)].append(outcome)
    shown: list[Bin] = []
    gap = 0.0
    for index, members in enumerate(grouped):
        low, high = index / bins, (index + 1) / bins
        if not members:
            shown.append(Bin(low, high, 0, None, None))
            continue
        mean = math.fsum(o.confidence for o in members) / len(members)
        accuracy = sum(o.right for o in members) / len(members)
        gap += len(members) * abs(accuracy - mean)
        shown.append(Bin(low, high, len(members), mean, accuracy))
    return Calibration(
        n=n,
        accuracy=sum(o.right for o in outcomes) / n,
        mean_confidence=math.fsum(o.confidence for o in outcomes) / n,
        ece=gap / n,
        brier=math.fsum((o.confidence - o.right) ** 2 for o in outcomes) / n,
        bins=tuple(shown),
    )


def needed(target: float, margin: float = MARGIN) -> int:
    """Escalated answers needed for a precision near ``target`` to be known within ``margin``
    (the 95 % normal interval's half-width), at least ``MIN_ESCALATED``."""
    return max(MIN_ESCALATED, math.ceil(Z_95 * Z_95 * target * (1 - target) / margin**2))


class Verdict(StrEnum):
    PROPOSED = "proposed"
    TOO_FEW = "too_few"  # not enough reviewed answers to fit and check a threshold
    UNREACHABLE = "unreachable"  # no threshold's escalated answers are wrong that often


@dataclass(frozen=True, slots=True)
class Proposal:
    verdict: Verdict
    target: float
    reviewed: int  # reviewed answers with a confidence, both halves
    needed: int  # escalated reviewed answers each half needs
    threshold: float | None  # escalate answers with confidence under this
    fit_precision: float | None  # the share changed among the fit half's escalated answers
    held_out: Proportion | None  # the same share in the other half, with its Wilson interval
    best_precision: float | None  # UNREACHABLE: the highest share with enough escalated


def _cuts(outcomes: Sequence[Outcome]) -> list[tuple[float, int, int]]:
    """(threshold, escalated, changed) for each threshold between distinct confidences (and
    1.0 above them all), for "escalate confidence < threshold"."""
    ordered = sorted(outcomes, key=lambda o: o.confidence)
    cuts: list[tuple[float, int, int]] = []
    changed = 0
    for index, outcome in enumerate(ordered):
        changed += not outcome.right
        following = ordered[index + 1].confidence if index + 1 < len(ordered) else 1.0
        if following > outcome.confidence:
            cuts.append((following, index + 1, changed))
    return cuts


def share_changed_below(outcomes: Sequence[Outcome], threshold: float) -> Proportion:
    """Of ``outcomes`` under ``threshold``: the share reviewers changed, with its interval."""
    below = [o for o in outcomes if o.confidence < threshold]
    return wilson(sum(not o.right for o in below), len(below))


def propose_threshold(fit: Sequence[Outcome], check: Sequence[Outcome], target: float) -> Proposal:
    """The highest threshold whose escalated answers (confidence under it) in ``fit`` number at
    least ``needed(target)`` and were changed by reviewers at least ``target`` of the time;
    its precision on ``check`` is the held-out figure."""
    want = needed(target)
    reviewed = len(fit) + len(check)
    if len(fit) < want or len(check) < want:
        return Proposal(Verdict.TOO_FEW, target, reviewed, want, None, None, None, None)
    enough = [(t, n, c) for t, n, c in _cuts(fit) if n >= want]
    passing = [(t, n, c) for t, n, c in enough if c / n >= target]
    if not passing:
        best = max((c / n for _, n, c in enough), default=None)
        return Proposal(Verdict.UNREACHABLE, target, reviewed, want, None, None, None, best)
    threshold, escalated, changed = passing[-1]
    return Proposal(
        Verdict.PROPOSED, target, reviewed, want, threshold, changed / escalated,
        share_changed_below(check, threshold), None,
    )  # fmt: skip
