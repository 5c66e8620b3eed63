"""A run's figures as stored and shown: each arm's figures and the paired comparison. Pure.

The comparison is paired on the same cases (McNemar's exact test, ``scoring.compare``): overall
on whether each case passed, and per judged field on whether it matched. A failed call counts
as a failed case for both.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from service.evaluation.cases import Case
from service.evaluation.scoring import (
    Comparison,
    Outcome,
    PackFigures,
    Rate,
    Reply,
    compare,
    field_matches,
    figures,
    passed,
)

CANDIDATE, BASELINE = "candidate", "baseline"


def run_figures(cases: Sequence[Case], answers: Mapping[str, Sequence[Reply]]) -> dict[str, Any]:
    """``answers``: per arm (``candidate``, and ``baseline`` when there is one), one reply per
    case in the pack's order."""
    arms: dict[str, Any] = {}
    outcomes: dict[str, list[Outcome]] = {}
    for arm, replies in answers.items():
        found = [Outcome.of(case, reply) for case, reply in zip(cases, replies, strict=True)]
        outcomes[arm] = found
        arms[arm] = {**figures_json(figures(found)), **_costs(replies)}
    comparison = None
    if CANDIDATE in outcomes and BASELINE in outcomes:
        comparison = _compared(outcomes[CANDIDATE], outcomes[BASELINE])
    return {"cases": len(cases), "arms": arms, "comparison": comparison}


def _compared(candidate: list[Outcome], baseline: list[Outcome]) -> dict[str, Any]:
    overall = compare(_passes(candidate), _passes(baseline))
    names = sorted({n for o in candidate for n in field_matches(o) or {}})
    fields = {
        name: comparison_json(
            compare(_field_by_case(candidate, name), _field_by_case(baseline, name))
        )
        for name in names
    }
    return {"passed": comparison_json(overall), "fields": fields}


def _passes(outcomes: list[Outcome]) -> dict[int, bool]:
    return {i: passed(o) for i, o in enumerate(outcomes)}


def _field_by_case(outcomes: list[Outcome], name: str) -> dict[int, bool]:
    found = {}
    for i, outcome in enumerate(outcomes):
        matches = field_matches(outcome)
        if matches is not None and name in matches:
            found[i] = matches[name]
    return found


def _costs(replies: Sequence[Reply]) -> dict[str, Any]:
    latencies = sorted(r.latency_ms for r in replies if r.latency_ms is not None)
    prompt = [r.prompt_tokens for r in replies if r.prompt_tokens is not None]
    completion = [r.completion_tokens for r in replies if r.completion_tokens is not None]
    return {
        "failed_calls": sum(r.text is None for r in replies),
        "latency_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "p95": _p95(latencies),
        },
        "tokens": {"prompt": sum(prompt), "completion": sum(completion)},
    }


def _p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def rate_text(rate: Mapping[str, Any], decimals: int = 0) -> str:
    """A stored rate as people read it: ``3/12 = 25 % [9, 53]`` (the interval in percent)."""
    if not rate["n"]:
        return "-"
    low, high = (f"{100 * rate[k]:.{decimals}f}" for k in ("low", "high"))
    return f"{rate['hits']}/{rate['n']} = {100 * rate['value']:.{decimals}f} % [{low}, {high}]"


def rate_json(rate: Rate) -> dict[str, Any]:
    return {"value": rate.value, "hits": rate.hits, "n": rate.n, "low": rate.low, "high": rate.high}


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    return asdict(comparison)


def figures_json(found: PackFigures) -> dict[str, Any]:
    return {
        "passed": rate_json(found.passed),
        "schema_valid": rate_json(found.schema_valid),
        "escalated": rate_json(found.escalated),
        "by_kind": {kind: rate_json(r) for kind, r in found.by_kind.items()},
        "by_slice": {
            label: {value: rate_json(r) for value, r in values.items()}
            for label, values in found.by_slice.items()
        },
        "fields": {
            name: {
                "exact_match": rate_json(f.exact_match),
                "classes": {label: asdict(c) for label, c in f.classes.items()},
                "confusion": f.confusion,
            }
            for name, f in found.fields.items()
        },
    }
