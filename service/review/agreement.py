"""Figures on reviewers' decisions: Cohen's kappa, field agreement, a Wilson interval. Pure."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Z_95 = 1.959963984540054
CATEGORIES = ("approve", "correct", "reject")


@dataclass(frozen=True, slots=True)
class Pair:
    """Two reviewers' independent decisions on one item (kind, and the corrected answer)."""

    first: str
    second: str
    first_answer: str | None = None
    second_answer: str | None = None


@dataclass(frozen=True, slots=True)
class Agreement:
    items: int
    observed: float | None  # the share of items both decided the same kind
    kappa: float | None  # None with no items, or when chance agreement is certain
    corrections: int  # items both corrected
    field_agreement: float | None  # of those: the share of fields both set alike


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Kappa of the first rater's kinds against the second's over the same items.

    ``(p_o - p_e) / (1 - p_e)``, where ``p_e`` is the agreement the raters' own frequencies
    would give by chance. None with no pairs, or when ``p_e`` is 1 (both always chose one kind).
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(first[k] * second[k] for k in first.keys() | second.keys()) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def _fields(answer: str | None) -> dict[str, Any] | None:
    if answer is None:
        return None
    try:
        value = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def field_matches(first: str | None, second: str | None) -> tuple[int, int]:
    """(fields set alike, fields in either) of two corrected answers: top-level JSON fields, or
    the whole text as one field when either is not a JSON object."""
    a, b = _fields(first), _fields(second)
    if a is None or b is None:
        return (1 if first == second else 0), 1
    names = a.keys() | b.keys()
    alike = sum(1 for name in names if name in a and name in b and a[name] == b[name])
    return alike, max(len(names), 1)


def agreement(pairs: Iterable[Pair]) -> Agreement:
    listed = list(pairs)
    kinds = [(p.first, p.second) for p in listed]
    n = len(kinds)
    both = [p for p in listed if p.first == p.second == "correct"]
    alike = total = 0
    for p in both:
        matched, fields = field_matches(p.first_answer, p.second_answer)
        alike, total = alike + matched, total + fields
    return Agreement(
        items=n,
        observed=sum(1 for a, b in kinds if a == b) / n if n else None,
        kappa=cohen_kappa(kinds),
        corrections=len(both),
        field_agreement=alike / total if total else None,
    )


@dataclass(frozen=True, slots=True)
class Proportion:
    hits: int
    n: int
    estimate: float | None
    low: float | None
    high: float | None


def wilson(hits: int, n: int, z: float = Z_95) -> Proportion:
    """The share ``hits / n`` with its Wilson score interval (95 % by default)."""
    if n <= 0:
        return Proportion(hits, 0, None, None, None)
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Proportion(hits, n, p, max(0.0, centre - half), min(1.0, centre + half))
