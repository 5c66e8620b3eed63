"""How a version did on a pack: per-case outcomes turned into figures with intervals, and the
paired comparison of two versions on the same cases. Pure.

A case passes when the answer matches what was expected: for a JSON answer, every field the case
names (all of the expected object's top-level fields when it names none) has the expected value;
otherwise the answer's text, stripped, equals the expected text. A failed or unparseable answer
fails. Rates carry a Wilson score interval (scipy's ``binomtest(...).proportion_ci``).

Two versions answer the same cases, so they are compared pair by pair (McNemar's exact test):
only the cases where exactly one of them passed say anything, and under "no difference" each of
those is equally likely to go either way, a binomial with p = 1/2. The verdict is ``better`` or
``worse`` when the two-sided p-value is below ``alpha``, else ``no detectable difference``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import binomtest

from service.evaluation.cases import Case, json_object

ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class Reply:
    """What one version answered to one case, judged under its route's contract."""

    text: str | None  # None: the call failed
    error: str | None = None  # why it failed
    schema_valid: bool | None = None  # None: the route has no schema
    escalated: bool = False  # the route's policy would send it to review
    confidence: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One case answered by one version."""

    case: Case
    answer: str | None  # None: the call failed
    schema_valid: bool | None = None
    escalated: bool = False

    @classmethod
    def of(cls, case: Case, reply: Reply) -> Outcome:
        return cls(case, reply.text, reply.schema_valid, reply.escalated)


@dataclass(frozen=True, slots=True)
class Rate:
    hits: int
    n: int
    low: float | None
    high: float | None

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None


def rate(hits: int, n: int) -> Rate:
    if n == 0:
        return Rate(0, 0, None, None)
    interval = binomtest(hits, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return Rate(hits, n, float(interval.low), float(interval.high))


def field_matches(outcome: Outcome) -> dict[str, bool] | None:
    """Each judged field: did the answer give the expected value? ``None`` for a text case."""
    expected = json_object(outcome.case.expected)
    if expected is None:
        return None
    answer = json_object(outcome.answer) or {}
    names = outcome.case.fields or tuple(expected)
    return {name: name in answer and answer[name] == expected.get(name) for name in names}


def passed(outcome: Outcome) -> bool:
    if outcome.answer is None:
        return False
    matches = field_matches(outcome)
    if matches is None:
        return outcome.answer.strip() == outcome.case.expected.strip()
    return all(matches.values())


@dataclass(frozen=True, slots=True)
class ClassFigures:
    precision: float | None
    recall: float | None
    f1: float | None
    support: int  # cases whose expected value is this class


@dataclass(frozen=True, slots=True)
class FieldFigures:
    exact_match: Rate
    classes: dict[str, ClassFigures]  # for fields whose expected values are strings
    confusion: dict[str, dict[str, int]]  # expected -> answered -> count


def field_figures(outcomes: Sequence[Outcome]) -> dict[str, FieldFigures]:
    """Per judged field: exact match, and for categorical ones precision, recall, F1 and the
    confusion matrix (an answer without the field, or a failed call, counts as ``(none)``)."""
    pairs: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for outcome in outcomes:
        expected = json_object(outcome.case.expected)
        if expected is None:
            continue
        answer = json_object(outcome.answer) or {}
        for name in outcome.case.fields or tuple(expected):
            pairs[name].append((expected.get(name), answer.get(name, "(none)")))
    return {name: _figures(found) for name, found in sorted(pairs.items())}


def _figures(pairs: list[tuple[Any, Any]]) -> FieldFigures:
    matched = rate(sum(e == a for e, a in pairs), len(pairs))
    if not all(isinstance(e, str) for e, _ in pairs):
        return FieldFigures(matched, {}, {})
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for expected, answered in pairs:
        confusion[expected][str(answered)] += 1
    classes = {}
    for label in sorted(confusion):
        true_pos = confusion[label][label]
        predicted = sum(row[label] for row in confusion.values())
        support = sum(confusion[label].values())
        precision = true_pos / predicted if predicted else None
        recall = true_pos / support if support else None
        classes[label] = ClassFigures(precision, recall, _f1(precision, recall), support)
    return FieldFigures(matched, classes, {k: dict(v) for k, v in sorted(confusion.items())})


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision == 0.0 or recall == 0.0:  # a harmonic mean with a zero is zero
        return 0.0
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


@dataclass(frozen=True, slots=True)
class PackFigures:
    cases: int
    passed: Rate
    schema_valid: Rate  # over the answers whose validity is known
    escalated: Rate
    by_kind: dict[str, Rate]
    by_slice: dict[str, dict[str, Rate]]  # label -> value -> pass rate
    fields: dict[str, FieldFigures]


def figures(outcomes: Sequence[Outcome]) -> PackFigures:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_slice: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        ok = passed(outcome)
        by_kind[outcome.case.kind.value].append(ok)
        for label, value in outcome.case.slices.items():
            by_slice[label][value].append(ok)
    judged = [o.schema_valid for o in outcomes if o.schema_valid is not None]
    return PackFigures(
        cases=len(outcomes),
        passed=rate(sum(passed(o) for o in outcomes), len(outcomes)),
        schema_valid=rate(sum(judged), len(judged)),
        escalated=rate(sum(o.escalated for o in outcomes), len(outcomes)),
        by_kind={kind: rate(sum(v), len(v)) for kind, v in sorted(by_kind.items())},
        by_slice={
            label: {value: rate(sum(v), len(v)) for value, v in sorted(values.items())}
            for label, values in sorted(by_slice.items())
        },
        fields=field_figures(outcomes),
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    only_candidate: int  # cases only the candidate passed
    only_baseline: int
    p_value: float
    verdict: str  # better | worse | no detectable difference


def compare(
    candidate: Mapping[int, bool], baseline: Mapping[int, bool], alpha: float = ALPHA
) -> Comparison:
    """McNemar's exact test on the cases both answered (keyed by the case's position)."""
    shared = sorted(set(candidate) & set(baseline))
    wins = sum(candidate[i] and not baseline[i] for i in shared)
    losses = sum(baseline[i] and not candidate[i] for i in shared)
    p_value = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    if p_value < alpha:
        verdict = "better" if wins > losses else "worse"
    else:
        verdict = "no detectable difference"
    return Comparison(wins, losses, p_value, verdict)
