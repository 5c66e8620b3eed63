"""Tool calls and several choices under contract, pure: each call checked against its own tool's
schema and scored, the worst choice deciding review, calls compared for shadow agreement."""

from __future__ import annotations

import json
from typing import Any

from rollout.core.agreement import compare
from service.guard import ContractValidator
from service.guard.answers import comparable, reviewed_answer
from service.guard.route_guard import RouteContract, judge, verdict_metadata
from service.guard.tool_calls import score_calls, validate_calls

WEATHER = ContractValidator(
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
)
TOOLS = {"get_weather": WEATHER}
CHECKS = RouteContract.client_checks(None).with_tools(TOOLS)


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}


def answer(*choices: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [choice | {"index": i} for i, choice in enumerate(choices)]}


def calling(
    *calls: dict[str, Any], finish: str = "tool_calls", tokens: Any = None
) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "tool_calls": list(calls)}
    return {"message": message, "finish_reason": finish, "logprobs": {"content": tokens}}


def test_each_call_is_checked_against_its_own_tool() -> None:
    checked = validate_calls([call("get_weather", '{"city": "Paris"}')], TOOLS, "tool_calls")
    assert checked.valid and checked.value == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}
    ]
    wrong = validate_calls(
        [call("get_weather", '{"town": "Paris"}'), call("delete_all", "{}")], TOOLS, "tool_calls"
    )
    assert not wrong.valid
    assert any(e.startswith("tool_calls/0 (get_weather): (root)") for e in wrong.errors)
    assert "tool_calls/1 (delete_all): no tool of this request has this name" in wrong.errors
    cut = validate_calls([call("get_weather", '{"city": "Par')], TOOLS, "length")
    assert cut.errors[0] == "truncated at max_tokens" and not cut.valid


def test_a_call_is_scored_on_its_value_tokens_when_its_tokens_are_json() -> None:
    # vLLM's `required` writes the calls as a JSON array under a grammar: the name and the
    # argument values are the leaves, the grammar's tokens do not count.
    tokens = [
        {"token": '[{"name": "', "logprob": 0.0},
        {"token": "get_weather", "logprob": -0.01},
        {"token": '", "parameters": {"city": "', "logprob": 0.0},
        {"token": "Paris", "logprob": -1.2},
        {"token": '"}}]', "logprob": 0.0},
    ]
    scored = score_calls(tokens)
    assert scored is not None and scored.method == "json_values"
    assert set(scored.fields) == {"/0/name", "/0/parameters/city"}
    assert scored.score == scored.fields["/0/parameters/city"] < 0.5
    hermes = [{"token": "<tool_call>", "logprob": 0.0}, {"token": '{"name"', "logprob": -0.5}]
    free = score_calls(hermes)
    assert free is not None and free.method == "sequence"
    assert score_calls(None) is None


def test_the_worst_choice_decides_and_every_choice_has_its_verdict() -> None:
    good = calling(call("get_weather", '{"city": "Paris"}'))
    bad = calling(call("get_weather", "{}"))
    judged = judge(answer(good, bad, good), CHECKS, request_id="r1")
    assert judged.valid is False and judged.review_reason == "invalid"
    assert [c.valid for c in judged.choices] == [True, False, True]
    metadata = verdict_metadata(judged, None)
    assert [c["schema_valid"] for c in metadata["choices"]] == [True, False, True]
    assert metadata["schema_errors"] == list(judged.choices[1].validation.errors)  # type: ignore[union-attr]
    assert judge(answer(good), CHECKS, request_id="r1").valid is True


def test_a_request_with_tools_that_answers_in_text_is_valid_unless_cut() -> None:
    text = {"message": {"role": "assistant", "content": "It is sunny."}, "finish_reason": "stop"}
    assert judge(answer(text), CHECKS, request_id="r").valid is None  # nothing to check
    cut = text | {"finish_reason": "length"}
    judged = judge(answer(cut), CHECKS, request_id="r")
    assert judged.valid is False and judged.truncated


def test_json_mode_checks_validate_and_say_when_an_answer_was_cut() -> None:
    checks = RouteContract.client_checks(ContractValidator({"type": "object"}))
    whole = {"message": {"content": '{"a": 1}'}, "finish_reason": "stop"}
    cut = {"message": {"content": '{"a": '}, "finish_reason": "length"}
    assert judge(answer(whole), checks).valid is True
    judged = judge(answer(cut), checks)
    assert (judged.valid, judged.truncated) == (False, True)
    assert verdict_metadata(judged, None)["truncated"] is True
    assert not checks.reviewed  # a client's own checks never make review items


def test_shadow_agreement_compares_call_names_and_arguments() -> None:
    stable = comparable(answer(calling(call("get_weather", '{"city": "Paris"}'))), chat=True)
    same_name = comparable(answer(calling(call("get_weather", '{"city": "Lyon"}'))), chat=True)
    assert stable is not None and same_name is not None
    marks = compare(stable, same_name)
    assert marks == {"tool_calls/0/name": True, "tool_calls/0/arguments": False}
    text = {"message": {"role": "assistant", "content": "hello"}}
    assert comparable(answer(text), chat=True) == "hello"


def test_a_reviewer_sees_every_choice_and_its_calls_as_json() -> None:
    two = answer(calling(call("get_weather", '{"city": "Paris"}')), {"message": {"content": "hi"}})
    shown = json.loads(reviewed_answer(two)["choices"][0]["message"]["content"])
    assert shown["choices"][0]["tool_calls"] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
    assert shown["choices"][1] == {"index": 1, "content": "hi"}
    single = answer({"message": {"content": "hi"}})
    assert reviewed_answer(single) is single
