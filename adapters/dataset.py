"""Training data: chat-format JSONL examples (the review export's format), read and checked
line by line, split with a seeded shuffle, and the demo's deliberately wrong labels."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

ROLES = frozenset({"system", "user", "assistant"})


class DatasetError(ValueError):
    """The training data is unusable; the message names the file and line."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    line: int
    messages: tuple[Message, ...]

    @property
    def prompt(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def answer(self) -> Message:
        return self.messages[-1]


def example_data(name: str = "tickets.jsonl") -> Traversable:
    """A file shipped in ``adapters/data`` (the ticket-triage dataset and its JSON schema)."""
    return resources.files("adapters").joinpath("data", name)


def _parse_message(raw: object, where: str, index: int) -> Message:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: messages[{index}] is not an object")
    role, content = raw.get("role"), raw.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise DatasetError(
            f"{where}: messages[{index}].role must be one of {sorted(ROLES)}, got {role!r}"
        )
    if not isinstance(content, str):
        raise DatasetError(f"{where}: messages[{index}].content must be a string")
    return Message(role=role, content=content)


def parse_example(text: str, where: str, line: int) -> Example:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f'{where}: expected an object with a non-empty "messages" list')
    parsed = tuple(_parse_message(m, where, i) for i, m in enumerate(messages))
    if parsed[-1].role != "assistant":
        raise DatasetError(f"{where}: the last message must be the assistant's answer")
    if not parsed[-1].content.strip():
        raise DatasetError(f"{where}: the assistant's answer is empty")
    if not any(m.role == "user" for m in parsed[:-1]):
        raise DatasetError(f"{where}: no user message before the answer")
    return Example(line=line, messages=parsed)


def load_examples(path: Path) -> list[Example]:
    """Every example in a chat JSONL file; blank lines are skipped, anything else must parse."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    examples = [
        parse_example(text, f"{path}:{number}", number)
        for number, text in enumerate(lines, start=1)
        if text.strip()
    ]
    if len(examples) < 2:
        raise DatasetError(f"{path}: need at least 2 examples (one to train, one to validate)")
    return examples


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_examples(
    examples: Sequence[Example], *, val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, validation) after a seeded shuffle; each side keeps at least one example."""
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be between 0 and 1")
    if len(examples) < 2:
        raise DatasetError("need at least 2 examples (one to train, one to validate)")
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return order[n_val:], order[:n_val]


def shuffle_labels(examples: Sequence[Example], *, seed: int) -> list[Example]:
    """Give each example another example's answer (a worse dataset on purpose, for demos).

    The answers are passed along one random cycle through the examples, so with two or more
    examples no example keeps its own answer.
    """
    cycle = list(range(len(examples)))
    random.Random(f"shuffle-labels-{seed}").shuffle(cycle)
    answers = {cycle[i]: examples[cycle[i - 1]].answer for i in range(len(cycle))}
    return [
        replace(example, messages=(*example.prompt, answers[i]))
        for i, example in enumerate(examples)
    ]
