"""What a client may send with tools, and what a pool without a tool-call parser refuses. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import GatewayError, InvalidRequest, UnsupportedParameter
from service.gateway.request_rules import Endpoint, Limits, prepare
from service.guard import MAX_SCHEMA_DEPTH

LIMITS = Limits(100, 16, 20, 4, 8, max_choices=4, auto_tools=True)
NO_PARSER = Limits(100, 16, 20, 4, 8, max_choices=4, auto_tools=False)
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "r", "messages": [{"role": "user", "content": "hi"}], **extra}


def refused(payload: dict[str, Any], kind: type[GatewayError], limits: Limits = LIMITS) -> Any:
    with pytest.raises(kind) as caught:
        prepare(Endpoint.CHAT, payload, "base", limits)
    return caught.value


def test_tools_pass_and_their_schemas_are_handed_over_for_the_whole_check() -> None:
    prepared = prepare(
        Endpoint.CHAT, chat(tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True),
        "base", LIMITS,
    )  # fmt: skip
    assert prepared.client_schemas == (PARAMETERS,)
    assert prepared.schema_cost > 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)  # fmt: skip
def test_malformed_tools_are_refused_with_the_field(extra: dict[str, Any], param: str) -> None:
    assert refused(chat(**extra), InvalidRequest).param == param


def test_a_tool_schema_past_the_bounds_is_refused() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH + 1):
        deep = {"type": "object", "properties": {"a": deep}}
    tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    error = refused(chat(tools=[tool]), InvalidRequest)
    assert error.param == "tools" and "Tool 'f' parameters" in error.message


def test_without_a_parser_only_named_and_required_calls_are_served() -> None:
    for choice in (None, "auto"):
        extra = {"tools": [WEATHER]} | ({"tool_choice": choice} if choice else {})
        error = refused(chat(**extra), UnsupportedParameter, NO_PARSER)
        assert error.param == "tool_choice"
    for named in ("required", "none", NAMED):
        prepare(Endpoint.CHAT, chat(tools=[WEATHER], tool_choice=named), "base", NO_PARSER)


def test_a_conversation_may_carry_earlier_calls_and_their_results() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    prepare(Endpoint.CHAT, chat(messages=history, tools=[WEATHER]), "base", LIMITS)
    no_id = [*history[:2], {"role": "tool", "content": "sunny"}]
    assert refused(chat(messages=no_id), InvalidRequest).param == "messages"
    bad_call = [history[0], {"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}]
    assert refused(chat(messages=bad_call), InvalidRequest).param == "messages"
