"""What an answer may carry out of the gateway: OpenAI's documented fields and ``loragate``.

vLLM adds fields of its own to answers (``token_ids``, ``prompt_logprobs``, ``stop_reason``,
``kv_transfer_params``, ...) and more with each release; clients written against OpenAI do not
expect them, and a field that appears one day is a field someone starts to depend on. Each
object of an answer has an allow-list here (a ``Shape``: its fields, and the shapes of those
cleaned in turn), and ``clean`` drops everything else, in place. The lists are
OpenAI's own (tests/gateway/test_openai_shape.py holds them equal to the official client's
models). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

METADATA = "loragate"


@dataclass(frozen=True, slots=True)
class Shape:
    """An object's allowed fields, and the shapes of those whose values are cleaned in turn
    (each item of a list); the others are kept whole."""

    fields: frozenset[str]
    nested: tuple[tuple[str, Shape], ...] = ()


def shape(*names: str, **nested: Shape) -> Shape:
    return Shape(frozenset(names) | nested.keys(), tuple(nested.items()))


def without(base: Shape, name: str, **nested: Shape) -> Shape:
    """``base`` less one field, some nested shapes replaced."""
    kept = dict(base.nested) | nested
    return Shape((base.fields - {name}) | nested.keys(), tuple(kept.items()))


TOP_LOGPROB = shape("token", "bytes", "logprob")
TOKEN_LOGPROB = shape("token", "bytes", "logprob", top_logprobs=TOP_LOGPROB)
CHAT_LOGPROBS = shape(content=TOKEN_LOGPROB, refusal=TOKEN_LOGPROB)
FUNCTION = shape("name", "arguments")
TOOL_CALL = shape("id", "type", function=FUNCTION)
MESSAGE = shape(
    "role", "content", "refusal", "annotations", "audio", function_call=FUNCTION,
    tool_calls=TOOL_CALL,
)  # fmt: skip
# A stream's delta is a message without annotations, its tool calls numbered by `index`.
DELTA_TOOL_CALL = shape("id", "type", "index", function=FUNCTION)
DELTA = without(MESSAGE, "annotations", tool_calls=DELTA_TOOL_CALL)
PROMPT_TOKENS_DETAILS = shape(
    "audio_tokens", "cache_write_tokens", "cached_tokens", "image_tokens", "text_tokens"
)
COMPLETION_TOKENS_DETAILS = shape(
    "accepted_prediction_tokens", "audio_tokens", "reasoning_tokens",
    "rejected_prediction_tokens", "text_tokens",
)  # fmt: skip
USAGE = shape(
    "prompt_tokens", "completion_tokens", "total_tokens",
    prompt_tokens_details=PROMPT_TOKENS_DETAILS,
    completion_tokens_details=COMPLETION_TOKENS_DETAILS,
)  # fmt: skip
CHAT_CHOICE = shape("index", "finish_reason", message=MESSAGE, logprobs=CHAT_LOGPROBS)
CHUNK_CHOICE = shape("index", "finish_reason", delta=DELTA, logprobs=CHAT_LOGPROBS)
_ANSWER = ("id", "object", "created", "model", "system_fingerprint", METADATA)
CHAT_COMPLETION = shape(
    *_ANSWER, "service_tier", "metadata", "moderation", choices=CHAT_CHOICE, usage=USAGE
)
CHAT_CHUNK = shape(
    *_ANSWER, "service_tier", "moderation", "obfuscation", choices=CHUNK_CHOICE, usage=USAGE
)
# The legacy completions' logprobs: parallel lists, `top_logprobs` a list of token -> logprob.
COMPLETION_LOGPROBS = shape("text_offset", "token_logprobs", "tokens", "top_logprobs")
COMPLETION_CHOICE = shape("index", "finish_reason", "text", logprobs=COMPLETION_LOGPROBS)
COMPLETION = shape(*_ANSWER, choices=COMPLETION_CHOICE, usage=USAGE)
# By endpoint ("chat", "completions"): a non-streamed answer's shape, and a stream event's
# (OpenAI's completions stream events are completions).
ANSWER_SHAPES: Mapping[str, Shape] = {"chat": CHAT_COMPLETION, "completions": COMPLETION}
CHUNK_SHAPES: Mapping[str, Shape] = {"chat": CHAT_CHUNK, "completions": COMPLETION}


def clean(value: Any, allowed: Shape) -> bool:
    """Drop, in place, every field ``allowed`` does not list, at every depth it describes (a
    list is cleaned item by item); True when something was dropped."""
    if isinstance(value, list):
        dropped = False
        for item in value:
            dropped = clean(item, allowed) or dropped
        return dropped
    if not isinstance(value, dict):
        return False
    dropped = False
    if not value.keys() <= allowed.fields:
        for name in [name for name in value if name not in allowed.fields]:
            del value[name]
        dropped = True
    for name, inner in allowed.nested:
        child = value.get(name)
        if child is not None:
            dropped = clean(child, inner) or dropped
    return dropped
