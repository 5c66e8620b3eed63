"""How a shadow answer compares with stable's answer to the same request. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

WHOLE = ""  # the mark for the whole answer, used when the answers are not JSON objects


def _object(text: str) -> dict[str, object] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def compare(stable: str, candidate: str) -> dict[str, bool]:
    """Per top-level JSON field of stable's answer: equal in the candidate's? Else the whole."""
    ours, theirs = _object(stable), _object(candidate)
    if ours is None or not ours:
        return {WHOLE: stable.strip() == candidate.strip()}
    if theirs is None:
        return dict.fromkeys(ours, False)
    return {name: name in theirs and theirs[name] == value for name, value in ours.items()}


def score(marks: Mapping[str, bool], fields: Sequence[str] | None) -> float | None:
    """The share of compared fields that agree; ``None`` when none of ``fields`` was compared."""
    if WHOLE in marks:
        return 1.0 if marks[WHOLE] else 0.0
    chosen = [marks[f] for f in fields if f in marks] if fields else list(marks.values())
    return sum(chosen) / len(chosen) if chosen else None
