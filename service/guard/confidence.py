"""Confidence of an answer, from the token logprobs the engine returned (never from the answer).

Under a JSON schema the grammar forces braces, keys, colons, commas and quotes, and those tokens
come back with probability ~1; only the value tokens carry the model's uncertainty. They are
found by character offsets into the JSON text, not by token patterns: the same key may be one
token from one model and four from another.

A field's score is the *minimum* probability among the tokens of its value: one unsure token
(`2` at p=0.37 where `1` was nearly as likely) is what makes a value doubtful, and a product
over tokens would instead punish long values for being long. The answer's score is the minimum
over the fields that count, the conservative choice for deciding what a person should look at:
all of them unless the caller says which (a route contract counts its categorical fields, see
`guard.fields`); when none of the answer's fields counts, all of them do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Method = Literal["json_values", "sequence"]
Tokens = Sequence[Mapping[str, object]]


@dataclass(frozen=True, slots=True)
class Confidence:
    """`score` and every field score lie in [0, 1]; `fields` maps JSON pointers to scores, and
    `score` is the minimum over `counted`, the pointers of the fields that count."""

    score: float
    fields: dict[str, float]
    method: Method
    counted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Leaf:
    """A leaf value of a JSON text: its pointer and its character span [start, end)."""

    pointer: str
    start: int
    end: int


def score_free(tokens: Tokens | None) -> Confidence | None:
    """Length-normalised sequence probability, exp(mean logprob); None when there are no tokens."""
    logprobs = _logprobs(tokens)
    if not logprobs:
        return None
    return Confidence(_probability(math.fsum(logprobs) / len(logprobs)), {}, "sequence")


def score_json(
    text: str, tokens: Tokens | None, counts: Callable[[str], bool] | None = None
) -> Confidence | None:
    """Per-field scores over the value tokens of a JSON answer; the answer's score is the lowest
    among the fields `counts` accepts (every field without it, or when it accepts none).

    Falls back to `score_free` when the text is not JSON, has no leaf values, or the tokens do
    not add up to the text. None when there are no usable logprobs.
    """
    logprobs = _logprobs(tokens)
    if not logprobs or tokens is None:
        return None
    spans = _token_spans(text, tokens)
    leaves = _leaves_or_none(text)
    if spans is None or not leaves:
        return score_free(tokens)
    fields: dict[str, float] = {}
    first = 0  # tokens and leaves are both in text order: sweep once
    for leaf in leaves:
        while first < len(spans) and spans[first][1] <= leaf.start:
            first += 1
        covering = []
        index = first
        while index < len(spans) and spans[index][0] < leaf.end:
            if spans[index][1] > spans[index][0]:  # a token with no characters covers nothing
                covering.append(logprobs[index])
            index += 1
        if covering:
            fields[leaf.pointer] = _probability(min(covering))
    if not fields:
        return score_free(tokens)
    counted = [pointer for pointer in fields if counts is None or counts(pointer)] or list(fields)
    return Confidence(min(fields[p] for p in counted), fields, "json_values", tuple(counted))


def leaf_spans(text: str) -> list[Leaf]:
    """Every leaf of a JSON text in order: strings (inner characters, without the quotes),
    numbers, true/false/null, and empty objects or arrays. The quotes are left out because the
    grammar forces them once the schema fixes the type; the empty string `""` gets its closing
    quote, so that the token which ended it still counts. Raises ValueError if not JSON."""
    leaves: list[Leaf] = []
    stack: list[_Open] = []
    pointer = ""
    at = _skip(text, 0)
    while True:
        at = _value(text, at, pointer, leaves, stack)
        while True:  # after a value: a comma, a closing bracket, or the end
            at = _skip(text, at)
            if not stack:
                if at != len(text):
                    raise ValueError(f"extra data at {at}")
                return leaves
            parent = stack[-1]
            char = text[at : at + 1]
            if char == ",":
                at = _skip(text, at + 1)
                if parent.index is None:
                    pointer, at = _key(text, at, parent.pointer)
                else:
                    parent.index += 1
                    pointer = f"{parent.pointer}/{parent.index}"
                break
            if char == ("}" if parent.index is None else "]"):
                stack.pop()
                at += 1
                continue
            raise ValueError(f"unexpected {char!r} at {at}")


@dataclass(slots=True)
class _Open:
    """An open container: its pointer, and the current index for an array (None: object)."""

    pointer: str
    index: int | None


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


def _value(text: str, at: int, pointer: str, leaves: list[Leaf], stack: list[_Open]) -> int:
    """Read one value at `at`, returning where it ends. Containers are pushed on `stack` (and
    their first member read) rather than recursed into, so any depth is fine."""
    while text[at : at + 1] in ("{", "["):
        close = "}" if text[at] == "{" else "]"
        inner = _skip(text, at + 1)
        if text[inner : inner + 1] == close:
            leaves.append(Leaf(pointer, at, inner + 1))
            return inner + 1
        if close == "]":
            stack.append(_Open(pointer, 0))
            pointer, at = f"{pointer}/0", inner
        else:
            stack.append(_Open(pointer, None))
            pointer, at = _key(text, inner, pointer)
    if text[at : at + 1] == '"':
        match = _STRING.match(text, at)
        if not match:
            raise ValueError(f"unterminated string at {at}")
        end = match.end()
        leaves.append(Leaf(pointer, at + 1, end - 1 if end - at > 2 else end))
        return end
    for literal in ("true", "false", "null"):
        if text.startswith(literal, at):
            leaves.append(Leaf(pointer, at, at + len(literal)))
            return at + len(literal)
    number = _NUMBER.match(text, at)
    if not number or number.end() == at:
        raise ValueError(f"no JSON value at {at}")
    leaves.append(Leaf(pointer, at, number.end()))
    return number.end()


def _key(text: str, at: int, parent: str) -> tuple[str, int]:
    match = _STRING.match(text, at)
    if not match:
        raise ValueError(f"expected a key at {at}")
    colon = _skip(text, match.end())
    if text[colon : colon + 1] != ":":
        raise ValueError(f"expected ':' at {colon}")
    key = str(json.loads(match.group()))
    return f"{parent}/{key.replace('~', '~0').replace('/', '~1')}", _skip(text, colon + 1)


def _leaves_or_none(text: str) -> list[Leaf] | None:
    try:
        json.loads(text)  # the scanner trusts its input; make sure it is JSON first
        return leaf_spans(text)
    except (ValueError, RecursionError):
        return None


def _logprobs(tokens: Tokens | None) -> list[float] | None:
    """The logprobs, or None when any is missing or not a number (an unknown, not a guess)."""
    if not tokens:
        return None
    values: list[float] = []
    for item in tokens:
        logprob = item.get("logprob") if isinstance(item, Mapping) else None
        if isinstance(logprob, bool) or not isinstance(logprob, int | float):
            return None
        if math.isnan(logprob):
            return None
        values.append(float(logprob))
    return values


def _token_spans(text: str, tokens: Tokens) -> list[tuple[int, int]] | None:
    """Character span of each token, from its `bytes` when given (exact for a token that holds
    part of a multi-byte character) else its text; None when they do not spell `text` (tokens
    after its end, such as the end-of-sequence token, get an empty span)."""
    pieces: list[bytes] = []
    for item in tokens:
        raw = item.get("bytes")
        token = item.get("token")
        if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            pieces.append(bytes(raw))
        elif isinstance(token, str):
            pieces.append(token.encode("utf-8", "surrogatepass"))
        else:
            return None
    encoded = text.encode("utf-8", "surrogatepass")
    joined = b"".join(pieces)
    # vLLM also reports the end-of-sequence token (e.g. `<|im_end|>`), which is not in the text:
    # tokens that start at or past the text's end write nothing of the answer.
    if not joined.startswith(encoded):
        return None
    char_at = [0] * (len(encoded) + 1)  # byte offset -> index of the character holding it
    offset = 0
    for index, char in enumerate(text):
        width = len(char.encode("utf-8", "surrogatepass"))
        char_at[offset : offset + width] = [index] * width
        offset += width
    char_at[offset] = len(text)
    spans: list[tuple[int, int]] = []
    offset = 0
    for piece in pieces:
        if offset >= len(encoded):
            spans.append((len(text), len(text)))
        elif offset + len(piece) > len(encoded):
            return None  # a token that runs past the end of the text: they do not match
        elif piece:
            spans.append((char_at[offset], char_at[offset + len(piece) - 1] + 1))
        else:
            spans.append((char_at[offset], char_at[offset]))
        offset += len(piece)
    return spans


def _probability(logprob: float) -> float:
    return min(1.0, max(0.0, math.exp(min(logprob, 0.0))))
