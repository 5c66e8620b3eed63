"""What a request asks to have checked, through the official ``openai`` client: clean answers,
JSON modes (and answers cut by max_tokens), ``n`` > 1 and tool calls, on a plain route and on
a route whose review policy escalates."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from sqlalchemy import select

from service.db.models import RequestRecord, ReviewItem
from service.settings import EnginePoolSettings
from tests.conftest import MODEL, Harness, make_settings, running_gateway, wait_until
from tests.fake_engine import VLLM_ANSWER_FIELDS, VLLM_CHOICE_FIELDS, Behaviour, FakeEngine
from tests.gateway.test_streamed_contracts import client_of

REVIEWED = "reviewed"  # a review policy, no output schema: every answer goes to review
MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
REQUIRED: dict[str, Any] = {"tools": [WEATHER], "tool_choice": "required"}
GOOD_CALL = ("get_weather", '{"city": "Paris", "unit": "c"}')
BAD_CALL = ("get_weather", '{"town": "Paris"}')


@pytest.fixture
async def gw(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    routes = tmp_path / "routes.yaml"
    reviewed = {"name": REVIEWED, "review": {"escalate": "never", "max_choices": 3}}
    routes.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, reviewed]}))
    pool = EnginePoolSettings(
        name="default", base_model=MODEL, urls=[engine.url], tool_call_parser="hermes"
    )
    settings = make_settings(sqlite_url, tmp_path, [engine.url], routes_file=routes)
    async with running_gateway(settings.model_copy(update={"engines": [pool]})) as harness:
        yield harness


async def create(h: Harness, route: str = "chat", **extra: Any) -> Any:
    async with client_of(h) as client:
        return await client.chat.completions.create(model=route, messages=MESSAGES, **extra)


async def stream(h: Harness, route: str = "chat", **extra: Any) -> list[Any]:
    async with client_of(h) as client:
        chunks = await client.chat.completions.create(
            model=route, messages=MESSAGES, stream=True, **extra
        )
        return [chunk async for chunk in chunks]


async def record_where(h: Harness, **match: Any) -> RequestRecord:
    """The one request record with these values, once the gateway has written it."""

    async def found() -> list[RequestRecord]:
        async with h.app.state.gateway.sessions() as session:
            rows = (await session.scalars(select(RequestRecord).filter_by(**match))).all()
            return list(rows)

    await wait_until(found, what="the request record")
    (record,) = await found()
    return record


# --- clean answers --------------------------------------------------------------------------


async def test_vllm_fields_never_reach_the_client(gw: Harness) -> None:
    raw = await gw.client.post(
        "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES}, headers=gw.auth()
    )
    answer = raw.json()
    assert not set(VLLM_ANSWER_FIELDS) & set(answer)
    assert not set(VLLM_CHOICE_FIELDS) & set(answer["choices"][0])
    assert "reasoning" not in answer["choices"][0]["message"]
    chunks = await stream(gw)
    assert all(not c.model_extra for c in chunks)
    assert all(not c.choices[0].model_extra and not c.choices[0].delta.model_extra for c in chunks)


# --- JSON modes -----------------------------------------------------------------------------


async def test_json_object_is_constrained_validated_and_given_a_verdict(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=['{"city"', ':"Paris"}'])
    answer = await create(gw, response_format={"type": "json_object"})
    sent = engine.requests[-1]
    assert sent["response_format"] == {"type": "json_object"} and sent["logprobs"] is True
    assert json.loads(answer.choices[0].message.content) == {"city": "Paris"}
    assert answer.choices[0].logprobs is None  # asked for the score only
    verdict = (answer.model_extra or {})["loragate"]
    assert (verdict["schema_valid"], verdict["truncated"], verdict["review_id"]) == (
        True, False, None,
    )  # fmt: skip


async def test_an_answer_cut_by_max_tokens_is_asked_again_with_twice_the_budget(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.script.append(Behaviour(tokens=['{"city"', ':"Par'], finish="length"))
    engine.script.append(Behaviour(tokens=['{"city"', ':"Paris"}']))
    answer = await create(gw, response_format={"type": "json_object"}, max_tokens=30)
    assert [r["max_tokens"] for r in engine.requests] == [30, 60]
    assert json.loads(answer.choices[0].message.content) == {"city": "Paris"}


async def test_an_answer_still_cut_is_refused_never_passed_on(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=['{"city"', ':"Par'], finish="length")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await create(gw, response_format={"type": "json_object"}, max_tokens=30)
    assert refused.value.code == "output_truncated"
    assert "max_tokens" in refused.value.message
    record = await record_where(gw, route="chat")
    assert record.status_code == 422 and record.schema_valid is False


async def test_a_streamed_json_answer_cut_by_max_tokens_says_so_in_its_verdict(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=['{"city"', ':"Par'], finish="length")
    chunks = await stream(gw, response_format={"type": "json_object"}, max_tokens=2)
    verdict = (chunks[-1].model_extra or {})["loragate"]
    assert verdict["schema_valid"] is False and verdict["truncated"] is True
    assert "truncated at max_tokens" in verdict["schema_errors"]


async def test_a_json_schema_answer_is_validated_against_the_clients_schema(
    gw: Harness, engine: FakeEngine
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    engine.default = Behaviour(tokens=['{"n": "two"}'])
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await create(gw, response_format=fmt)
    assert refused.value.code == "output_schema_violation" and "/n" in refused.value.message
    assert len(engine.requests) == 2  # asked again once


# --- n > 1 ----------------------------------------------------------------------------------


async def test_every_choice_is_judged_and_kept(gw: Harness, engine: FakeEngine) -> None:
    engine.default = Behaviour(choice_tokens=[["first"], ["second"], ["third"]])
    answer = await create(gw, REVIEWED, n=3)
    assert engine.requests[-1]["n"] == 3
    assert [c.message.content for c in answer.choices] == ["first", "second", "third"]
    verdict = (answer.model_extra or {})["loragate"]
    assert [c["index"] for c in verdict["choices"]] == [0, 1, 2]
    assert all(c["confidence"] is not None for c in verdict["choices"])
    record = await record_where(gw, route=REVIEWED)
    kept = json.loads(record.response_body or "")
    assert [c["message"]["content"] for c in kept["choices"]] == ["first", "second", "third"]


async def test_n_above_the_routes_setting_is_refused(gw: Harness, engine: FakeEngine) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await create(gw, REVIEWED, n=4)
    assert refused.value.code == "value_out_of_range" and "between 1 and 3" in refused.value.message
    assert engine.requests == []


async def test_streamed_choices_are_recorded_each(gw: Harness, engine: FakeEngine) -> None:
    engine.default = Behaviour(tokens=["a", "b"])
    chunks = await stream(gw, n=2)
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    record = await record_where(gw, stream=True)
    kept = json.loads(record.response_body or "")
    assert [c["message"]["content"] for c in kept["choices"]] == ["ab", "ab"]


# --- tools ----------------------------------------------------------------------------------


async def test_a_tool_call_passes_through_with_its_arguments_checked(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tool_calls=[GOOD_CALL])
    answer = await create(gw, **REQUIRED, parallel_tool_calls=False)
    sent = engine.requests[-1]
    assert sent["tools"] == [WEATHER] and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    (call,) = answer.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris", "unit": "c"},
    )  # fmt: skip
    verdict = (answer.model_extra or {})["loragate"]
    assert verdict["schema_valid"] is True and verdict["confidence"] is not None


async def test_a_tool_call_against_its_schema_is_refused_on_a_plain_route(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tool_calls=[BAD_CALL])
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await create(gw, **REQUIRED)
    assert "tool_calls/0 (get_weather)" in refused.value.message
    assert len(engine.requests) == 2


async def test_an_invalid_tool_call_is_escalated_by_the_routes_policy(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tool_calls=[BAD_CALL])
    answer = await create(gw, REVIEWED, **REQUIRED)
    verdict = (answer.model_extra or {})["loragate"]
    assert verdict["schema_valid"] is False and verdict["review_id"] is not None
    await record_where(gw, route=REVIEWED)  # written with its review item
    async with gw.app.state.gateway.sessions() as session:
        item = (await session.execute(select(ReviewItem))).scalar_one()
    assert item.reason == "invalid"
    shown = json.loads(item.answer)  # the review page shows the calls as JSON
    assert shown["choices"][0]["tool_calls"] == [{"name": BAD_CALL[0], "arguments": BAD_CALL[1]}]


async def test_streamed_tool_calls_reach_the_client_as_it_expects(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=["t0", "t1", "t2", "t3"], tool_calls=[GOOD_CALL])
    chunks = await stream(gw, **REQUIRED)
    arguments = "".join(
        call.function.arguments or ""
        for c in chunks if c.choices and c.choices[0].delta.tool_calls
        for call in c.choices[0].delta.tool_calls
    )  # fmt: skip
    assert json.loads(arguments) == {"city": "Paris", "unit": "c"}
    verdict = (chunks[-1].model_extra or {})["loragate"]
    assert verdict["schema_valid"] is True
    record = await record_where(gw, stream=True)
    (call,) = json.loads(record.response_body or "")["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": GOOD_CALL[1]}


async def test_tool_choice_auto_needs_a_pool_with_a_parser(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with running_gateway(make_settings(sqlite_url, tmp_path, [engine.url])) as h:
        with pytest.raises(openai.BadRequestError) as refused:
            await create(h, tools=[WEATHER])
        assert refused.value.code == "unsupported_parameter"
        assert refused.value.param == "tool_choice" and "tool_call_parser" in refused.value.message
        engine.default = Behaviour(tool_calls=[GOOD_CALL])
        named = {"type": "function", "function": {"name": "get_weather"}}
        answer = await create(h, tools=[WEATHER], tool_choice=named)  # no parser needed
        assert answer.choices[0].message.tool_calls
    assert len(engine.requests) == 1


async def test_the_tool_call_history_of_a_conversation_passes(
    gw: Harness, engine: FakeEngine
) -> None:
    history: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call-0", "type": "function",
             "function": {"name": GOOD_CALL[0], "arguments": GOOD_CALL[1]}}]},
        {"role": "tool", "tool_call_id": "call-0", "content": "sunny, 21 C"},
    ]  # fmt: skip
    async with client_of(gw) as client:
        await client.chat.completions.create(model="chat", messages=history, tools=[WEATHER])
    assert engine.requests[-1]["messages"] == history


async def test_a_json_mode_under_a_review_policy_without_a_schema_is_checked_by_it(
    gw: Harness, engine: FakeEngine
) -> None:
    engine.default = Behaviour(choice_tokens=[['{"a": 1}'], ["not JSON"]])
    answer = await create(gw, REVIEWED, n=2, response_format={"type": "json_object"})
    checked = (answer.model_extra or {})["loragate"]
    assert [c["schema_valid"] for c in checked["choices"]] == [True, False]
    assert checked["schema_valid"] is False and checked["review_id"] is not None
    assert len(engine.requests) == 2  # asked again once (retry_invalid), then escalated
