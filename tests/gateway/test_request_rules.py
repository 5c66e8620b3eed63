"""Unit tests of service/request_rules.py: what a client may send, what reaches the engine."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.errors import (
    GatewayError,
    InvalidRequest,
    LegacyGuidedField,
    MalformedJSON,
    UnsupportedParameter,
    ValueOutOfRange,
)
from service.gateway.request_rules import (
    Endpoint,
    Limits,
    Prepared,
    check_schema_bounds,
    parse_body,
    prepare,
    route_name,
)
from service.guard import MAX_SCHEMA_BYTES, MAX_SCHEMA_COST, MAX_SCHEMA_DEPTH

TARGET = "base-model"
LIMITS = Limits(
    max_tokens_cap=100,
    default_max_tokens=16,
    max_top_logprobs=20,
    max_stop_sequences=4,
    max_messages=8,
    max_choices=4,
)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "ticket-triage", "messages": [{"role": "user", "content": "hi"}], **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "ticket-triage", "prompt": "hi", **extra}


def run(payload: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> Prepared:
    return prepare(endpoint, payload, TARGET, LIMITS)


def upstream(prepared: Prepared) -> dict[str, Any]:
    body = orjson.loads(prepared.upstream_body)
    assert isinstance(body, dict)
    return body


def refused(
    payload: dict[str, Any], kind: type[GatewayError], endpoint: Endpoint = Endpoint.CHAT
) -> GatewayError:
    with pytest.raises(kind) as caught:
        run(payload, endpoint)
    return caught.value


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def schema_refused(schema: dict[str, Any], kind: type[GatewayError]) -> GatewayError:
    """Refused by the cheap bounds in prepare, else by the whole check the pipeline runs next
    (off the event loop) on the schema prepare hands it."""
    with pytest.raises(kind) as caught:
        prepared = run(chat(response_format=schema_format(schema)))
        assert prepared.client_schemas == (schema,)
        check_schema_bounds(prepared.client_schemas[0])
    return caught.value


# --- body and route name ------------------------------------------------------------------


def test_parse_body_refuses_non_json_and_non_objects() -> None:
    assert parse_body(b'{"model": "x"}') == {"model": "x"}
    with pytest.raises(MalformedJSON):
        parse_body(b"{not json")
    with pytest.raises(MalformedJSON):
        parse_body(b"[1, 2]")


@pytest.mark.parametrize("model", [None, "", 3])
def test_route_name_is_required(model: Any) -> None:
    payload = {} if model is None else {"model": model}
    with pytest.raises(InvalidRequest) as caught:
        route_name(payload)
    assert caught.value.param == "model"


# --- allow-list ---------------------------------------------------------------------------


def test_unknown_field_is_refused_with_its_name() -> None:
    error = refused(chat(best_of=2), UnsupportedParameter)
    assert error.param == "best_of"
    assert error.status == 400 and error.code == "unsupported_parameter"


def test_chat_only_field_is_refused_on_completions() -> None:
    error = refused(completion(messages=[{"role": "user", "content": "x"}]), UnsupportedParameter,
                    Endpoint.COMPLETIONS)  # fmt: skip
    assert error.param == "messages"


@pytest.mark.parametrize("field", ["guided_json", "guided_regex", "guided_choice"])
def test_legacy_guided_field_points_at_response_format(field: str) -> None:
    error = refused(chat(**{field: {"type": "object"}}), LegacyGuidedField)
    assert error.param == field
    assert error.code == "legacy_guided_field"
    assert "response_format" in error.message


# --- max_tokens ---------------------------------------------------------------------------


def test_model_is_replaced_by_target_and_default_max_tokens_applied() -> None:
    prepared = run(chat(temperature=0.5))
    body = upstream(prepared)
    assert body["model"] == TARGET
    assert body["max_tokens"] == LIMITS.default_max_tokens
    assert body["temperature"] == 0.5
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert prepared.stream is False and prepared.client_wants_usage is False


def test_max_tokens_within_cap_passes_unchanged() -> None:
    assert upstream(run(completion(max_tokens=100), Endpoint.COMPLETIONS))["max_tokens"] == 100


@pytest.mark.parametrize("value", [101, 0, -1])
def test_max_tokens_out_of_range_is_refused(value: int) -> None:
    error = refused(chat(max_tokens=value), ValueOutOfRange)
    assert error.param == "max_tokens" and error.code == "value_out_of_range"


def test_max_tokens_must_be_an_integer() -> None:
    assert refused(chat(max_tokens="10"), InvalidRequest).param == "max_tokens"
    assert refused(chat(max_tokens=True), InvalidRequest).param == "max_tokens"


def test_max_completion_tokens_becomes_max_tokens() -> None:
    body = upstream(run(chat(max_completion_tokens=42)))
    assert body["max_tokens"] == 42
    assert "max_completion_tokens" not in body


def test_max_completion_tokens_is_capped_and_exclusive() -> None:
    assert refused(chat(max_completion_tokens=500), ValueOutOfRange).param == "max_tokens"
    error = refused(chat(max_tokens=5, max_completion_tokens=5), InvalidRequest)
    assert error.param == "max_completion_tokens"


# --- sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 0])
def test_n_outside_one_to_max_choices_is_refused(n: Any) -> None:
    assert refused(chat(n=n), ValueOutOfRange).param == "n"


def test_n_must_be_an_integer() -> None:
    assert refused(chat(n=True), InvalidRequest).param == "n"


@pytest.mark.parametrize("n", [1, 3, 4])
def test_n_up_to_max_choices_passes_and_reserves_each_choice(n: int) -> None:
    prepared = run(chat(n=n, max_tokens=10))
    assert upstream(prepared)["n"] == n
    assert prepared.reserve_tokens >= 10 * n


def test_top_logprobs_bounds() -> None:
    assert upstream(run(chat(logprobs=True, top_logprobs=20)))["top_logprobs"] == 20
    assert refused(chat(logprobs=True, top_logprobs=21), ValueOutOfRange).param == "top_logprobs"
    assert refused(chat(top_logprobs=5), InvalidRequest).param == "top_logprobs"
    assert refused(chat(logprobs=False, top_logprobs=5), InvalidRequest).param == "top_logprobs"


def test_completion_logprobs_bounded() -> None:
    assert upstream(run(completion(logprobs=5), Endpoint.COMPLETIONS))["logprobs"] == 5
    error = refused(completion(logprobs=21), ValueOutOfRange, Endpoint.COMPLETIONS)
    assert error.param == "logprobs"


def test_stop_sequences_bounds() -> None:
    assert upstream(run(chat(stop=["a", "b", "c", "d"])))["stop"] == ["a", "b", "c", "d"]
    assert upstream(run(chat(stop="END")))["stop"] == "END"
    assert refused(chat(stop=["a", "b", "c", "d", "e"]), ValueOutOfRange).param == "stop"
    assert refused(chat(stop=[""]), ValueOutOfRange).param == "stop"
    assert refused(chat(stop=["x" * 257]), ValueOutOfRange).param == "stop"
    assert refused(chat(stop=[1]), InvalidRequest).param == "stop"


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", 2.5), ("top_p", -0.1), ("presence_penalty", 3)]
)
def test_sampling_numbers_out_of_range(field: str, value: float) -> None:
    assert refused(chat(**{field: value}), ValueOutOfRange).param == field


def test_deeply_nested_value_is_a_client_error() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(300):
        node.append([])
        node = node[0]
    error = refused(chat(logit_bias={"1": deep}), InvalidRequest)
    assert error.status == 400


# --- messages and prompt ------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "hi",
        [{"content": "no role"}],
        [{"role": "robot", "content": "x"}],
        [{"role": "user"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}],
        ["just a string"],
    ],
)
def test_malformed_messages_are_refused(messages: Any) -> None:
    payload = chat()
    if messages is None:
        del payload["messages"]
    else:
        payload["messages"] = messages
    assert refused(payload, InvalidRequest).param == "messages"


def test_text_parts_and_message_count() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert upstream(run(chat(messages=parts)))["messages"] == parts
    many = [{"role": "user", "content": "x"}] * (LIMITS.max_messages + 1)
    assert refused(chat(messages=many), ValueOutOfRange).param == "messages"


@pytest.mark.parametrize("prompt", ["", None, ["a", "b"], 5])
def test_bad_prompt_is_refused(prompt: Any) -> None:
    assert (
        refused(completion(prompt=prompt), InvalidRequest, Endpoint.COMPLETIONS).param == "prompt"
    )


# --- streaming ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "wants"), [(None, False), ({}, False), ({"include_usage": False}, False),
                           ({"include_usage": True}, True)]
)  # fmt: skip
def test_stream_always_asks_usage_upstream(options: dict[str, Any] | None, wants: bool) -> None:
    payload = chat(stream=True)
    if options is not None:
        payload["stream_options"] = options
    prepared = run(payload)
    assert prepared.stream is True
    assert prepared.client_wants_usage is wants
    assert upstream(prepared)["stream_options"] == {"include_usage": True}


def test_stream_options_rules() -> None:
    assert refused(chat(stream_options={"include_usage": True}), InvalidRequest).param == (
        "stream_options"
    )
    error = refused(chat(stream=True, stream_options={"continuous_usage_stats": True}),
                    UnsupportedParameter)  # fmt: skip
    assert error.param == "stream_options"
    assert refused(chat(stream="yes"), InvalidRequest).param == "stream"


# --- response_format ----------------------------------------------------------------------


def test_json_schema_response_format_is_forwarded() -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}
    body = upstream(run(chat(response_format=schema_format(schema))))
    assert body["response_format"]["json_schema"]["schema"] == schema


def test_response_format_type_must_be_known() -> None:
    assert refused(chat(response_format={"type": "xml"}), InvalidRequest).param == (
        "response_format"
    )
    error = refused(chat(response_format={"type": "json_schema"}), InvalidRequest)
    assert error.param == "response_format"


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def test_schema_1000_levels_deep_is_refused() -> None:
    error = refused(chat(response_format=schema_format(nested_schema(1000))), ValueOutOfRange)
    assert error.param == "response_format"
    assert str(MAX_SCHEMA_DEPTH) in error.message


def test_schema_within_depth_passes() -> None:
    check_schema_bounds(nested_schema(MAX_SCHEMA_DEPTH // 2 - 1))


@pytest.mark.parametrize(
    "ref", ["https://evil.example/schema.json", "file:///etc/passwd", "other.json#/a"]
)
def test_remote_ref_is_refused(ref: str) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    error = schema_refused(schema, InvalidRequest)
    assert error.param == "response_format"
    assert "$ref" in error.message


def test_local_ref_is_allowed() -> None:
    schema = {
        "$defs": {"label": {"enum": ["a", "b"]}},
        "type": "object",
        "properties": {"label": {"$ref": "#/$defs/label"}},
    }
    check_schema_bounds(schema)


def test_invalid_schema_is_refused() -> None:
    error = schema_refused({"type": "no-such-type"}, InvalidRequest)
    assert error.param == "response_format"
    assert "not valid" in error.message


def test_too_big_schema_is_refused() -> None:
    props = {f"field_{i}": {"type": "string", "description": "x" * 100} for i in range(200)}
    schema = {"type": "object", "properties": props}
    assert len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES
    error = refused(chat(response_format=schema_format(schema)), ValueOutOfRange)
    assert error.param == "response_format"
    assert str(MAX_SCHEMA_BYTES) in error.message


@pytest.mark.parametrize("pattern", ["(a+)+b", "(a|a)+", "(.*a){20}"])
def test_catastrophic_patterns_never_reach_the_engine(pattern: str) -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}
    error = schema_refused(schema, InvalidRequest)
    assert error.param == "response_format"
    assert "pattern" in error.message


def test_prepare_hands_over_the_schema_and_its_cost() -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}}
    prepared = run(chat(response_format=schema_format(schema)))
    assert prepared.client_schemas == (schema,)
    assert prepared.schema_cost == (1 + 2) + (1 + 1)  # each subschema and its keywords
    assert run(chat(response_format={"type": "json_object"})).client_schemas == ()
    assert run(chat()).client_schemas == ()


def test_a_schema_over_the_cost_bound_is_refused_before_the_meta_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack of issue 11: 5,300 empty alternatives, 16 KiB, 1-2 s of meta-schema each."""

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("the meta-schema ran on a schema over the cost bound")

    monkeypatch.setattr("service.guard.schema.Draft202012Validator.check_schema", never)
    schema = {"anyOf": [{} for _ in range(5300)]}
    assert len(orjson.dumps(schema)) <= MAX_SCHEMA_BYTES
    error = refused(chat(response_format=schema_format(schema)), ValueOutOfRange)
    assert error.param == "response_format"
    assert f"more than {MAX_SCHEMA_COST} subschemas" in error.message
