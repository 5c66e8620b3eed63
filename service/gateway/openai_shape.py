"""What an answer may carry out of the gateway: OpenAI's documented fields and ``loragate``.

vLLM adds fields of its own to answers (``token_ids``, ``prompt_logprobs``, ``stop_reason``,
``kv_transfer_params``, ...) and more with each release; clients written against OpenAI do not
expect them, and a field that appears one day is a field someone starts to depend on. Each
object of an answer has an allow-list here (a ``Shape``: field -> the shape of its value, or
None for a value kept whole), and ``clean`` drops everything else, in place. The lists are
OpenAI's own (tests/gateway/test_openai_shape.py holds them equal to the official client's
models). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A field's value: kept whole (None), or cleaned with a nested shape (each item of a list).
Shape = Mapping[str, "Shape | None"]

METADATA = "loragate"


def _keep(*names: str) -> dict[str, Shape | None]:
    return dict.fromkeys(names)


TOP_LOGPROB: Shape = _keep("token", "bytes", "logprob")
TOKEN_LOGPROB: Shape = {**_keep("token", "bytes", "logprob"), "top_logprobs": TOP_LOGPROB}
CHAT_LOGPROBS: Shape = {"content": TOKEN_LOGPROB, "refusal": TOKEN_LOGPROB}
FUNCTION: Shape = _keep("name", "arguments")
TOOL_CALL: Shape = {**_keep("id", "type"), "function": FUNCTION}
MESSAGE: Shape = {
    **_keep("role", "content", "refusal", "annotations", "audio"),
    "function_call": FUNCTION,
    "tool_calls": TOOL_CALL,
}
# A stream's delta is a message without annotations, its tool calls numbered by `index`.
DELTA_TOOL_CALL: Shape = {**TOOL_CALL, "index": None}
DELTA: Shape = {
    **{name: inner for name, inner in MESSAGE.items() if name != "annotations"},
    "tool_calls": DELTA_TOOL_CALL,
}
PROMPT_TOKENS_DETAILS: Shape = _keep(
    "audio_tokens", "cache_write_tokens", "cached_tokens", "image_tokens", "text_tokens"
)
COMPLETION_TOKENS_DETAILS: Shape = _keep(
    "accepted_prediction_tokens", "audio_tokens", "reasoning_tokens",
    "rejected_prediction_tokens", "text_tokens",
)  # fmt: skip
USAGE: Shape = {
    **_keep("prompt_tokens", "completion_tokens", "total_tokens"),
    "prompt_tokens_details": PROMPT_TOKENS_DETAILS,
    "completion_tokens_details": COMPLETION_TOKENS_DETAILS,
}
CHAT_CHOICE: Shape = {
    **_keep("index", "finish_reason"),
    "message": MESSAGE,
    "logprobs": CHAT_LOGPROBS,
}
CHUNK_CHOICE: Shape = {**_keep("index", "finish_reason"), "delta": DELTA, "logprobs": CHAT_LOGPROBS}
_ANSWER = _keep("id", "object", "created", "model", "system_fingerprint", METADATA)
CHAT_COMPLETION: Shape = {
    **_ANSWER, **_keep("service_tier", "metadata", "moderation"),
    "choices": CHAT_CHOICE, "usage": USAGE,
}  # fmt: skip
CHAT_CHUNK: Shape = {
    **_ANSWER, **_keep("service_tier", "moderation", "obfuscation"),
    "choices": CHUNK_CHOICE, "usage": USAGE,
}  # fmt: skip
# The legacy completions' logprobs: parallel lists, `top_logprobs` a list of token -> logprob.
COMPLETION_LOGPROBS: Shape = _keep("text_offset", "token_logprobs", "tokens", "top_logprobs")
COMPLETION_CHOICE: Shape = {
    **_keep("index", "finish_reason", "text"),
    "logprobs": COMPLETION_LOGPROBS,
}
COMPLETION: Shape = {**_ANSWER, "choices": COMPLETION_CHOICE, "usage": USAGE}
# By endpoint ("chat", "completions"): a non-streamed answer's shape, and a stream event's
# (OpenAI's completions stream events are completions).
ANSWER_SHAPES: Mapping[str, Shape] = {"chat": CHAT_COMPLETION, "completions": COMPLETION}
CHUNK_SHAPES: Mapping[str, Shape] = {"chat": CHAT_CHUNK, "completions": COMPLETION}


def clean(value: Any, shape: Shape) -> bool:
    """Drop, in place, every field ``shape`` does not list, at every depth it describes (a
    list is cleaned item by item); True when something was dropped."""
    if isinstance(value, list):
        dropped = False
        for item in value:
            dropped = clean(item, shape) or dropped
        return dropped
    if not isinstance(value, dict):
        return False
    extra = [name for name in value if name not in shape]
    for name in extra:
        del value[name]
    dropped = bool(extra)
    for name, inner in shape.items():
        if inner is not None:
            child = value.get(name)
            if child is not None:
                dropped = clean(child, inner) or dropped
    return dropped
