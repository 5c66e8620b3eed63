"""Tool calls, `n` > 1, JSON modes and clean answers on real vLLM, through the official `openai`
client: the package's gateway (its conftest), whose managed engine runs vLLM's `hermes`
tool-call parser with the bundled model's ChatML tools template.

Runs after test_review.py (file order): the review items made here would otherwise be among
the items that module counts."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator
from openai.types.chat import ChatCompletionMessage, chat_completion

from tests.real.live import LiveGateway
from tests.real.one_gateway.conftest import ASSISTANT_ROUTE
from tests.real.test_real_adapters import key_for

pytestmark = pytest.mark.slow

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
# strict: the engine pins the arguments to the schema (vLLM's structural tag).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
# Not strict, and a format the model cannot guess: the engine writes the call's envelope
# only, and the arguments break the schema.
TICKET = {
    "type": "function",
    "function": {
        "name": "open_ticket",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^[0-9]{6}-XQ$"}},
            "required": ["code"],
            "additionalProperties": False,
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
# What vLLM 0.32 adds to OpenAI's chat answer, at each level: a new one fails this test, so
# the allow-lists (service/gateway/openai_shape.py) are looked at with each vLLM upgrade.
VLLM_EXTRAS = {
    "answer": {
        "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
        "ec_transfer_params", "metrics",
    },
    "choice": {"stop_reason", "token_ids", "routed_experts"},
    "message": {"reasoning"},
}  # fmt: skip


@pytest.fixture(scope="module")
def client(live: LiveGateway) -> openai.OpenAI:
    out = live.cli(
        "keys", "create", "--role", "app", "--name", "tools", "--route", "chat",
        "--route", ASSISTANT_ROUTE,
    )  # fmt: skip
    key = next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, timeout=300, max_retries=0)


def ask(client: openai.OpenAI, **request: Any) -> Any:
    """A chat completion (or its stream), the request built as plain data."""
    return client.chat.completions.create(**request)


def verdict(answer: Any) -> dict[str, Any]:
    found: dict[str, Any] = (answer.model_extra or {})["loragate"]
    return found


def test_vllm_adds_only_the_fields_the_gateway_knows_and_none_leave(
    live: LiveGateway, client: openai.OpenAI
) -> None:
    body = {"messages": ASK, "max_tokens": 4, "n": 2, "logprobs": True, "top_logprobs": 1}
    engine = httpx.post(
        f"http://127.0.0.1:{live.engine_port}/v1/chat/completions",
        json={"model": "smollm2-135m-instruct", **body},
        timeout=300,
    ).json()
    choice, message = engine["choices"][0], engine["choices"][0]["message"]
    assert set(engine) - set(chat_completion.ChatCompletion.model_fields) == VLLM_EXTRAS["answer"]
    assert set(choice) - set(chat_completion.Choice.model_fields) == VLLM_EXTRAS["choice"]
    assert set(message) - set(ChatCompletionMessage.model_fields) == VLLM_EXTRAS["message"]
    answer = ask(client, model="chat", **body)
    assert not answer.model_extra
    for choice in answer.choices:
        assert not choice.model_extra and not choice.message.model_extra


def test_a_tool_call_with_arguments_checked_against_its_schema(client: openai.OpenAI) -> None:
    answer = ask(
        client,
        model="chat", messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=60,
        temperature=0,
    )  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason in {"tool_calls", "stop"}
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert not list(Draft202012Validator(WEATHER_PARAMETERS).iter_errors(arguments))
    checked = verdict(answer)
    assert checked["schema_valid"] is True and checked["schema_errors"] == []
    assert 0 < checked["confidence"] <= 1  # from the call's own tokens


def test_a_streamed_tool_call_reaches_the_client_as_it_expects(
    live: LiveGateway, client: openai.OpenAI
) -> None:
    stream = ask(
        client,
        model="chat", messages=ASK, tools=[WEATHER], tool_choice=NAMED, max_tokens=60,
        temperature=0, stream=True,
    )  # fmt: skip
    chunks = list(stream)
    calls = [
        call
        for chunk in chunks if chunk.choices and chunk.choices[0].delta.tool_calls
        for call in chunk.choices[0].delta.tool_calls
    ]  # fmt: skip
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = json.loads("".join((c.function.arguments or "") for c in calls if c.function))
    assert not list(Draft202012Validator(WEATHER_PARAMETERS).iter_errors(arguments))
    assert verdict(chunks[-1])["schema_valid"] is True
    record = live.wait_record(
        lambda r: r["stream"] and '"get_weather"' in (r["response_body"] or "")
    )
    (kept,) = json.loads(record["response_body"])["choices"][0]["message"]["tool_calls"]
    assert json.loads(kept["function"]["arguments"]) == arguments


def test_three_choices_each_judged_as_json(live: LiveGateway, client: openai.OpenAI) -> None:
    # Sampled (vLLM refuses n > 1 under greedy decoding), so each choice's verdict is held to
    # what its text is.
    answer = ask(
        client, model=ASSISTANT_ROUTE, n=3, max_tokens=80, temperature=0.8, seed=7,
        messages=[{"role": "user", "content": "Give a JSON object with key city set to Paris."}],
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert len(answer.choices) == 3
    checked = verdict(answer)
    assert [c["index"] for c in checked["choices"]] == [0, 1, 2]
    for choice, judged in zip(answer.choices, checked["choices"], strict=True):
        assert judged["schema_valid"] is is_object(choice.message.content)
        assert judged["truncated"] is (choice.finish_reason == "length")
    assert checked["schema_valid"] is all(c["schema_valid"] for c in checked["choices"])
    record = live.wait_record(lambda r: r["route"] == ASSISTANT_ROUTE and r["stream"] == 0)
    assert len(json.loads(record["response_body"])["choices"]) == 3


def is_object(text: str | None) -> bool:
    try:
        return isinstance(json.loads(text or ""), dict)
    except ValueError:
        return False


def test_a_json_object_cut_by_max_tokens_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        ask(
        client,
            model="chat", max_tokens=3, temperature=0,
            messages=[{"role": "user", "content": "Describe Paris as a JSON object."}],
            response_format={"type": "json_object"},
        )  # fmt: skip
    assert refused.value.code == "output_truncated"


def test_an_invalid_tool_call_is_escalated_to_review(
    live: LiveGateway, client: openai.OpenAI
) -> None:
    answer = ask(
        client,
        model=ASSISTANT_ROUTE, max_tokens=40, temperature=0, tools=[TICKET],
        tool_choice="required",
        messages=[{"role": "user", "content": "Open a ticket: my printer is on fire."}],
    )  # fmt: skip
    checked = verdict(answer)
    assert checked["schema_valid"] is False and checked["review_id"] is not None
    reviewer = key_for(live, "reviewer")
    items = httpx.get(
        f"{live.url}/v1/reviews/items", headers={"Authorization": f"Bearer {reviewer}"}
    ).json()
    (item,) = [i for i in items if i["id"] == checked["review_id"]]
    assert item["route"] == ASSISTANT_ROUTE and item["reason"] == "invalid"
    assert item["schema_errors"]
