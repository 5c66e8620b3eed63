"""Clean answers: only OpenAI's documented fields (and ``loragate``) leave the gateway.

The allow-lists are held equal to the official client's pydantic models, so an OpenAI field
the client learns about is a failing test here, not a field silently dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import completion, completion_choice, completion_usage
from openai.types.chat import chat_completion, chat_completion_chunk
from openai.types.chat import chat_completion_message_function_tool_call as tool_call
from openai.types.chat import chat_completion_token_logprob as token_logprob
from pydantic import BaseModel

from service.gateway import openai_shape as shape
from service.gateway.openai_shape import Shape, clean

PAIRS: list[tuple[Shape, type[BaseModel]]] = [
    (shape.CHAT_COMPLETION, chat_completion.ChatCompletion),
    (shape.CHAT_CHOICE, chat_completion.Choice),
    (shape.CHAT_LOGPROBS, chat_completion.ChoiceLogprobs),
    (shape.MESSAGE, chat_completion.ChatCompletionMessage),
    (shape.TOOL_CALL, tool_call.ChatCompletionMessageFunctionToolCall),
    (shape.FUNCTION, tool_call.Function),
    (shape.TOKEN_LOGPROB, token_logprob.ChatCompletionTokenLogprob),
    (shape.TOP_LOGPROB, token_logprob.TopLogprob),
    (shape.CHAT_CHUNK, chat_completion_chunk.ChatCompletionChunk),
    (shape.CHUNK_CHOICE, chat_completion_chunk.Choice),
    (shape.DELTA, chat_completion_chunk.ChoiceDelta),
    (shape.DELTA_TOOL_CALL, chat_completion_chunk.ChoiceDeltaToolCall),
    (shape.FUNCTION, chat_completion_chunk.ChoiceDeltaToolCallFunction),
    (shape.COMPLETION, completion.Completion),
    (shape.COMPLETION_CHOICE, completion_choice.CompletionChoice),
    (shape.COMPLETION_LOGPROBS, completion_choice.Logprobs),
    (shape.USAGE, completion_usage.CompletionUsage),
    (shape.PROMPT_TOKENS_DETAILS, completion_usage.PromptTokensDetails),
    (shape.COMPLETION_TOKENS_DETAILS, completion_usage.CompletionTokensDetails),
]


@pytest.mark.parametrize(("allowed", "model"), PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_each_allow_list_is_the_official_clients_model(
    allowed: Shape, model: type[BaseModel]
) -> None:
    ours = set(allowed.fields) - {shape.METADATA}
    assert ours == set(model.model_fields)


# A real vLLM 0.32 answer (the bundled model, n=2, logprobs), its values shortened.
VLLM_ANSWER = {
    "id": "chatcmpl-95cc", "object": "chat.completion", "created": 1796671368, "model": "smol",
    "choices": [
        {"index": i, "message": {"role": "assistant", "content": "Paris", "refusal": None,
                                 "annotations": None, "audio": None, "function_call": None,
                                 "reasoning": None, "tool_calls": []},
         "logprobs": {"content": [{"token": "Paris", "logprob": -0.1, "bytes": [80],
                                   "top_logprobs": [{"token": "Paris", "logprob": -0.1,
                                                     "bytes": [80]}]}]},
         "finish_reason": "length", "stop_reason": None, "token_ids": None,
         "routed_experts": None}
        for i in range(2)
    ],
    "service_tier": None, "system_fingerprint": "vllm-0.32.0-e1fcc0c9",
    "usage": {"prompt_tokens": 37, "total_tokens": 49, "completion_tokens": 12,
              "prompt_tokens_details": None, "completion_tokens_details": None},
    "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
    "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None,
}  # fmt: skip
VLLM_CHUNK = {
    "id": "chatcmpl-8b1e", "object": "chat.completion.chunk", "created": 1796671380,
    "model": "smol",
    "choices": [{"index": 0, "delta": {"content": None, "tool_calls": [
        {"id": "chatcmpl-tool-b00f", "type": "function", "index": 0,
         "function": {"name": "get_weather"}}]},
        "logprobs": None, "finish_reason": None, "token_ids": None}],
    "prompt_token_ids": None, "prompt_text": None,
}  # fmt: skip
VLLM_COMPLETION_CHUNK = {
    "id": "cmpl-8dc6", "object": "text_completion", "created": 1796671406, "model": "smol",
    "choices": [{"index": 0, "text": " elsewhere", "logprobs": None, "finish_reason": None,
                 "stop_reason": None, "prompt_token_ids": None, "token_ids": None}],
}  # fmt: skip


def fields(value: Any, path: str = "") -> set[str]:
    """Every field path in a JSON value (list items as ``[]``)."""
    if isinstance(value, list):
        return set().union(*(fields(item, f"{path}[]") for item in value))
    if not isinstance(value, dict):
        return set()
    found = set()
    for name, child in value.items():
        found.add(f"{path}.{name}")
        found |= fields(child, f"{path}.{name}")
    return found


def test_a_real_vllm_answer_keeps_only_openai_fields() -> None:
    answer = json.loads(json.dumps(VLLM_ANSWER))
    assert clean(answer, shape.CHAT_COMPLETION)
    parsed = chat_completion.ChatCompletion.model_validate(answer)
    assert fields(answer) == fields(parsed.model_dump(exclude_unset=True))
    assert not fields(answer) & {".prompt_logprobs", ".kv_transfer_params", ".choices[].token_ids"}
    assert answer["choices"][1]["logprobs"]["content"][0]["top_logprobs"][0]["token"] == "Paris"
    assert not clean(answer, shape.CHAT_COMPLETION)  # clean already: nothing to write anew


@pytest.mark.parametrize(
    ("event", "allowed", "model"),
    [
        (VLLM_CHUNK, shape.CHAT_CHUNK, chat_completion_chunk.ChatCompletionChunk),
        (VLLM_COMPLETION_CHUNK, shape.COMPLETION, completion.Completion),
    ],
    ids=["chat", "completions"],
)
def test_a_real_vllm_stream_event_keeps_only_openai_fields(
    event: dict[str, Any], allowed: Shape, model: type[BaseModel]
) -> None:
    cleaned = json.loads(json.dumps(event))
    assert clean(cleaned, allowed)
    assert set(cleaned) <= set(model.model_fields)
    choice = cleaned["choices"][0]
    assert not {"token_ids", "stop_reason", "prompt_token_ids"} & set(choice)
    assert not {"prompt_token_ids", "prompt_text"} & set(cleaned)
    assert choice.get("delta") == event["choices"][0].get("delta")  # the tool-call delta kept


def test_the_loragate_verdict_stays_and_only_at_the_top() -> None:
    answer = {"id": "x", "choices": [{"index": 0, "loragate": {}}], "loragate": {"review_id": "r"}}
    clean(answer, shape.CHAT_COMPLETION)
    assert answer == {"id": "x", "choices": [{"index": 0}], "loragate": {"review_id": "r"}}
