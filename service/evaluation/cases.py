"""Evaluation cases and packs: what they hold, how they are read from JSONL, how a pack is
named by its content. Pure.

A case is one input (chat messages, the last one the user's) with the answer expected for it,
a ``kind`` (``held_out``, ``injection``, ``formatting``, ``hard``, ``refusal``), optional slice
labels (``{"language": "de"}``) and, for a JSON answer, the fields that must match (all of the
expected object's top-level fields when not given).

A JSONL line is ``{"messages": [...], "expected": ANSWER, "kind": ..., "slices": {...},
"fields": [...]}``, or a training example (``{"messages": [..., {"role": "assistant",
"content": ANSWER}]}``, the format ``loragate reviews export`` writes): its last assistant
message is the expected answer. ``expected`` may be a string or a JSON value (kept as its JSON
text).

A pack's sha256 is over its cases' canonical JSON in a fixed order (sorted), so the same cases
always give the same digest, whatever order they were read in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.guard.prompts import plain_messages

MAX_CASES = 10_000
MAX_SLICES = 8
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class CaseKind(StrEnum):
    HELD_OUT = "held_out"
    INJECTION = "injection"
    FORMATTING = "formatting"
    HARD = "hard"
    REFUSAL = "refusal"


class CaseError(ValueError):
    """A case that cannot be used; the message says which line and why."""


@dataclass(frozen=True, slots=True)
class Case:
    messages: tuple[Mapping[str, str], ...]  # the input, no answer
    expected: str  # the answer's text (JSON text for a JSON answer)
    kind: CaseKind = CaseKind.HELD_OUT
    slices: Mapping[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] | None = None  # None: every top-level field of a JSON answer
    review_item_id: str | None = None  # where it came from, when a reviewed item

    def canonical(self) -> str:
        """The case as one line of canonical JSON (its identity; the source is not part of it)."""
        return json.dumps(
            {
                "messages": [dict(m) for m in self.messages],
                "expected": self.expected,
                "kind": self.kind.value,
                "slices": dict(sorted(self.slices.items())),
                "fields": list(self.fields) if self.fields is not None else None,
            },
            ensure_ascii=False,
            sort_keys=True,
            separators=(",", ":"),
        )

    @property
    def prompt(self) -> str:
        return prompt_of(self.messages)


def prompt_of(messages: Iterable[Mapping[str, str]]) -> str:
    """The text the model reads: every message's content, in order."""
    return "\n".join(m["content"] for m in messages)


def pack_sha256(cases: Iterable[Case]) -> str:
    lines = sorted(case.canonical() for case in cases)
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def kind_counts(cases: Iterable[Case]) -> dict[str, int]:
    counts = dict.fromkeys((kind.value for kind in CaseKind), 0)
    for case in cases:
        counts[case.kind.value] += 1
    return {kind: n for kind, n in counts.items() if n}


def parse_jsonl(text: str, *, default_kind: CaseKind = CaseKind.HELD_OUT) -> list[Case]:
    """Every non-blank line as a case; the first bad line raises ``CaseError`` naming it."""
    cases: list[Case] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaseError(f"line {number}: not JSON ({exc.msg})") from None
        try:
            cases.append(case_of(raw, default_kind=default_kind))
        except CaseError as exc:
            raise CaseError(f"line {number}: {exc}") from None
        if len(cases) > MAX_CASES:
            raise CaseError(f"more than {MAX_CASES} cases in one pack")
    return cases


def case_of(raw: object, *, default_kind: CaseKind = CaseKind.HELD_OUT) -> Case:
    """One case from its JSON object (see the module docstring)."""
    if not isinstance(raw, dict):
        raise CaseError("a case is a JSON object")
    unknown = set(raw) - {"messages", "expected", "kind", "slices", "fields"}
    if unknown:
        raise CaseError(f"unknown keys {sorted(unknown)}")
    messages = plain_messages(raw.get("messages"))
    if messages is None:
        raise CaseError(
            "messages must be a non-empty list of system, user and assistant messages with "
            "text content, at least one from the user"
        )
    expected = raw.get("expected")
    if expected is None:
        if messages[-1]["role"] != "assistant":
            raise CaseError("no expected answer: give 'expected' or end with an assistant message")
        expected = messages.pop()["content"]
    if messages[-1]["role"] == "assistant":
        raise CaseError("the input ends with an assistant message: nothing left to answer")
    expected_text = expected if isinstance(expected, str) else json.dumps(expected)
    if not expected_text.strip():
        raise CaseError("the expected answer is empty")
    return Case(
        messages=tuple(messages),
        expected=expected_text,
        kind=_kind(raw.get("kind"), default_kind),
        slices=_slices(raw.get("slices")),
        fields=_fields(raw.get("fields"), expected_text),
    )


def _kind(raw: object, default: CaseKind) -> CaseKind:
    if raw is None:
        return default
    try:
        return CaseKind(str(raw))
    except ValueError:
        names = ", ".join(kind.value for kind in CaseKind)
        raise CaseError(f"kind {raw!r} is not one of {names}") from None


def _slices(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_SLICES:
        raise CaseError(f"slices is an object of at most {MAX_SLICES} labels")
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in raw.items()):
        raise CaseError("slice labels and values are non-empty strings")
    return dict(raw)


def _fields(raw: object, expected: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(f, str) and f for f in raw):
        raise CaseError("fields is a non-empty list of field names")
    answer = json_object(expected)
    if answer is None:
        raise CaseError("fields are given but the expected answer is not a JSON object")
    missing = [name for name in raw if name not in answer]
    if missing:
        raise CaseError(f"fields {missing} are not in the expected answer")
    return tuple(raw)


def json_object(text: str | None) -> dict[str, Any] | None:
    """``text`` as a JSON object, or ``None`` (absent, not JSON, or not an object)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe(cases: Sequence[Case]) -> str:
    counts = ", ".join(f"{n} {kind}" for kind, n in kind_counts(cases).items())
    return f"{len(cases)} cases ({counts})" if cases else "0 cases"
