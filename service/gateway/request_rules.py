"""What a client may send, and what the gateway forwards to an engine. Pure functions.

Anything not allow-listed is refused (400), so a field vLLM would silently ignore or that could
hurt an engine never reaches one. Limits come from settings and the route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from service.errors import (
    InvalidRequest,
    LegacyGuidedField,
    MalformedJSON,
    UnsupportedParameter,
    ValueOutOfRange,
)
from service.gateway.tool_rules import check_tools
from service.guard import SchemaRefused, check_bounds, check_contract
from service.routes.view import RouteView
from service.settings import Settings


class Endpoint(StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is Endpoint.CHAT else "/v1/completions"


COMMON_FIELDS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop",
        "presence_penalty", "frequency_penalty", "seed", "user", "logit_bias", "logprobs",
        "top_k", "min_p", "repetition_penalty",
    }
)  # fmt: skip
FIELDS = {
    Endpoint.CHAT: COMMON_FIELDS
    | {
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    },
    Endpoint.COMPLETIONS: COMMON_FIELDS | {"prompt"},
}
LEGACY_GUIDED = frozenset(
    {
        "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "guided_whitespace_pattern",
    }
)  # fmt: skip
ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
MAX_STOP_CHARS = 256
MAX_USER_CHARS = 256
MAX_LOGIT_BIAS = 300
PROMPT_BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Limits:
    max_tokens_cap: int
    default_max_tokens: int
    max_top_logprobs: int
    max_stop_sequences: int
    max_messages: int
    max_choices: int = 1  # the most `n` may ask for
    auto_tools: bool = False  # the route's engines run a tool-call parser (tool_choice auto)

    @classmethod
    def for_route(cls, settings: Settings, route: RouteView, *, auto_tools: bool = False) -> Limits:
        cap = route.max_tokens_cap or settings.max_tokens_cap
        default = min(route.default_max_tokens or settings.default_max_tokens, cap)
        policy = route.contract.policy if route.contract is not None else None
        choices = policy.max_choices if policy is not None else None
        return cls(
            cap, default, settings.max_top_logprobs, settings.max_stop_sequences,
            settings.max_messages, choices or settings.max_choices, auto_tools,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Prepared:
    upstream_body: bytes
    stream: bool
    client_wants_usage: bool
    # The client's schemas (response_format's, each tool's parameters), their cheap bounds
    # checked, and their cost; the rest of their check (meta-schema and keyword rules) is the
    # caller's, off the event loop.
    client_schemas: tuple[dict[str, Any], ...] = ()
    schema_cost: int = 0
    # Tokens a per-minute token limit reserves before the call: every choice's max_tokens plus
    # the prompt, estimated at 4 bytes a token; settled with the engine's usage afterwards.
    reserve_tokens: int = 0


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"Request body is not valid JSON: {exc.msg}.") from exc
    if not isinstance(payload, dict):
        raise MalformedJSON("Request body must be a JSON object.")
    return payload


def route_name(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: the name of a route.", param="model")
    return model


def prepare(
    endpoint: Endpoint,
    payload: dict[str, Any],
    target: str,
    limits: Limits,
    forced: Mapping[str, Any] | None = None,
    bounds: Callable[[dict[str, Any]], int] = check_bounds,
) -> Prepared:
    """Check the client's body and build the engine's body (route name replaced by target).

    ``forced`` are fields the gateway sets itself (a route's output contract), added after the
    client's fields are checked. A ``response_format`` JSON Schema gets its cheap bounds here
    (``bounds``: ``check_bounds``, or the gateway's, which remembers verdicts); its whole check
    is the caller's, off the event loop.
    """
    _refuse_unknown_fields(endpoint, payload)
    body = dict(payload)
    body["model"] = target
    schema_cost = 0
    if endpoint is Endpoint.CHAT:
        _check_messages(body.get("messages"), limits)
        _check_chat_logprobs(body, limits)
        if "response_format" in body:
            schema_cost = _check_response_format(body["response_format"], bounds)
        schema_cost += check_tools(body, bounds, auto_tools=limits.auto_tools)
        if "max_completion_tokens" in body:
            if "max_tokens" in body:
                raise InvalidRequest(
                    "Send either 'max_tokens' or 'max_completion_tokens', not both.",
                    param="max_completion_tokens",
                )
            body["max_tokens"] = body.pop("max_completion_tokens")
    else:
        _check_prompt(body.get("prompt"))
        _check_completion_logprobs(body, limits)
    body["max_tokens"] = _max_tokens(body.get("max_tokens"), limits)
    _check_sampling(body, limits)
    stream = _flag(body, "stream")
    wants_usage = False
    if stream:
        options = body.get("stream_options") or {}
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise UnsupportedParameter(
                "'stream_options' may only hold 'include_usage'.", param="stream_options"
            )
        wants_usage = bool(options.get("include_usage"))
        # Always ask for usage so the record has token counts; stripped if the client did not ask.
        body["stream_options"] = {"include_usage": True}
    elif "stream_options" in body:
        raise InvalidRequest("'stream_options' needs 'stream': true.", param="stream_options")
    if forced:
        body.update(forced)
    try:
        upstream_body = orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # nested past orjson's limit of 254 levels
        raise InvalidRequest("The request body nests too deeply.") from exc
    schema = client_schema(payload)
    schemas = (() if schema is None else (schema,)) + tuple(
        t["function"]["parameters"]
        for t in payload.get("tools") or ()
        if t["function"].get("parameters")
    )
    n = body.get("n")
    choices = n if isinstance(n, int) and n > 1 else 1
    reserve = body["max_tokens"] * choices + len(upstream_body) // PROMPT_BYTES_PER_TOKEN
    return Prepared(upstream_body, stream, wants_usage, schemas, schema_cost, reserve)


def _refuse_unknown_fields(endpoint: Endpoint, payload: dict[str, Any]) -> None:
    legacy = sorted(LEGACY_GUIDED & payload.keys())
    if legacy:
        raise LegacyGuidedField(
            f"'{legacy[0]}' is a removed vLLM field that engines ignore silently; use "
            "'response_format': {'type': 'json_schema', 'json_schema': {...}} instead.",
            param=legacy[0],
        )
    unknown = sorted(payload.keys() - FIELDS[endpoint])
    if unknown:
        raise UnsupportedParameter(
            f"Unsupported parameter '{unknown[0]}' for {endpoint.path}. "
            f"Allowed: {', '.join(sorted(FIELDS[endpoint]))}.",
            param=unknown[0],
        )


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be true or false.", param=name)
    return value


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer.", param=name)
    if not low <= value <= high:
        raise ValueOutOfRange(f"'{name}' must be between {low} and {high}.", param=name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a number.", param=name)
    if not low <= value <= high:
        raise ValueOutOfRange(f"'{name}' must be between {low} and {high}.", param=name)


def _max_tokens(value: Any, limits: Limits) -> int:
    if value is None:
        return limits.default_max_tokens
    checked = _int({"max_tokens": value}, "max_tokens", 1, limits.max_tokens_cap)
    assert checked is not None
    return checked


def _check_sampling(body: dict[str, Any], limits: Limits) -> None:
    _int(body, "n", 1, limits.max_choices)
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "min_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    _number(body, "repetition_penalty", 0.0, 2.0)
    _int(body, "top_k", -1, 1000)
    _int(body, "seed", -(2**63), 2**63 - 1)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidRequest("'stop' must be a string or a list of strings.", param="stop")
        if len(stops) > limits.max_stop_sequences:
            raise ValueOutOfRange(
                f"'stop' may hold at most {limits.max_stop_sequences} sequences.", param="stop"
            )
        if any(len(s) > MAX_STOP_CHARS or not s for s in stops):
            raise ValueOutOfRange(
                f"Each stop sequence must have 1 to {MAX_STOP_CHARS} characters.", param="stop"
            )
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise InvalidRequest(
            f"'user' must be a string of at most {MAX_USER_CHARS} characters.", param="user"
        )
    bias = body.get("logit_bias")
    if bias is not None and (not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS):
        raise InvalidRequest(
            f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} entries.",
            param="logit_bias",
        )


def _check_messages(messages: Any, limits: Limits) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", param="messages")
    if len(messages) > limits.max_messages:
        raise ValueOutOfRange(
            f"'messages' may hold at most {limits.max_messages} messages.", param="messages"
        )
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequest(
                f"Each message needs a 'role' among {sorted(ROLES)}.", param="messages"
            )
        content = message.get("content")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest("A 'tool' message needs its 'tool_call_id'.", param="messages")
        if message["role"] == "assistant" and "tool_calls" in message:
            _check_history_calls(message["tool_calls"])
            if content is None:
                continue
        if isinstance(content, str):
            continue
        if isinstance(content, list) and all(
            isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str)
            for part in content
        ):  # fmt: skip
            continue
        raise InvalidRequest(
            "Each message's 'content' must be a string or a list of text parts.",
            param="messages",
        )


def _check_history_calls(calls: Any) -> None:
    """An assistant message's earlier tool calls, as the client got them (arguments a string)."""
    if not isinstance(calls, list) or not all(
        isinstance(call, dict) and isinstance(call.get("id"), str)
        and isinstance(call.get("function"), dict)
        and isinstance(call["function"].get("name"), str)
        and isinstance(call["function"].get("arguments"), str)
        for call in calls
    ):  # fmt: skip
        raise InvalidRequest(
            "An assistant message's 'tool_calls' must be a list of {'id', 'type': 'function', "
            "'function': {'name', 'arguments'}}.",
            param="messages",
        )


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("'prompt' must be a non-empty string.", param="prompt")


def _check_chat_logprobs(body: dict[str, Any], limits: Limits) -> None:
    logprobs = _flag(body, "logprobs")
    top = _int(body, "top_logprobs", 0, limits.max_top_logprobs)
    if top is not None and not logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")


def _check_completion_logprobs(body: dict[str, Any], limits: Limits) -> None:
    _int(body, "logprobs", 0, limits.max_top_logprobs)


def _check_response_format(value: Any, bounds: Callable[[dict[str, Any]], int]) -> int:
    """The cost of its JSON Schema (0 without one), once the cheap bounds are checked."""
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"'response_format.type' must be one of {sorted(RESPONSE_FORMATS)}.",
            param="response_format",
        )
    if value["type"] != "json_schema":
        return 0
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "'response_format.json_schema.schema' must be a JSON Schema object.",
            param="response_format",
        )
    try:
        return bounds(schema)  # cheap and linear; the rest runs off the event loop
    except SchemaRefused as exc:
        raise _schema_error(exc) from exc


def client_schema(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema of a checked body's ``response_format``, if it sends one."""
    value = payload.get("response_format")
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return None
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def check_schema_bounds(schema: dict[str, Any]) -> None:
    """Refuse a client's schema the way a route's output contract is refused (see guard): the
    whole check, meta-schema included; hundreds of milliseconds for the largest schemas."""
    try:
        check_contract(schema)
    except SchemaRefused as exc:
        raise _schema_error(exc) from exc


def _schema_error(exc: SchemaRefused) -> InvalidRequest:
    error = ValueOutOfRange if exc.out_of_range else InvalidRequest
    return error(str(exc), param="response_format")
