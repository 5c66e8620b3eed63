"""The checks a request brings with it: a JSON mode (``response_format`` ``json_object`` or
``json_schema``) and tools, enforced like a route's output contract.

On a route with a contract, the request's tools join it (each call judged against its tool's
schema) and its review policy decides. On a route without one, a request in a JSON mode or with
tools gets ``RouteContract.client_checks``: the answer is constrained by the engine where it can
be (vLLM's structured outputs for both JSON modes; for tool calls under ``required``, a named
function or a tool marked ``strict``), always validated here, asked again once when invalid
(with twice the token budget when it was cut by ``max_tokens``), and refused with 422 when
still invalid; a stream, whose tokens are already out, ends with the verdict instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import orjson

from service.errors import OutputInvalid, OutputTruncated
from service.gateway.request_rules import client_schema
from service.gateway.tool_rules import tool_schemas
from service.guard import ContractValidator
from service.guard.route_guard import Judgement, RouteContract
from service.routes.view import RouteView
from service.settings import Settings

JSON_MODES = frozenset({"json_object", "json_schema"})
# What the engine's body gets for the checks: token logprobs, to score the answer (stripped
# from the answer again).
CLIENT_CHECK_FIELDS: Mapping[str, Any] = MappingProxyType({"logprobs": True, "top_logprobs": 1})
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def asks_checks(payload: Mapping[str, Any]) -> bool:
    """The request is in a JSON mode or sends tools."""
    response_format = payload.get("response_format")
    mode = response_format.get("type") if isinstance(response_format, dict) else None
    return mode in JSON_MODES or bool(payload.get("tools"))


def request_contract(route: RouteView, payload: Mapping[str, Any]) -> RouteContract | None:
    """The contract this request is judged by (None: nothing to check). Called once the
    client's schemas passed their whole check: their validators skip it."""
    tools = {
        name: ContractValidator(schema, checked=True)
        for name, schema in tool_schemas(payload).items()
    }
    response_format = payload.get("response_format")
    mode = response_format.get("type") if isinstance(response_format, dict) else None
    validator = None
    if mode in JSON_MODES:
        validator = ContractValidator(client_schema(payload) or ANY_OBJECT, checked=True)
    contract = route.contract
    if contract is None:
        if validator is None and not tools:
            return None
        return RouteContract.client_checks(validator).with_tools(tools)
    if contract.validator is None and validator is not None:
        # A review policy without a schema: the client's JSON mode is checked under it.
        contract = replace(contract, validator=validator)
    return contract.with_tools(tools)


def larger_budget(upstream_body: bytes, cap: int) -> bytes | None:
    """The engine's body with twice its ``max_tokens`` (up to ``cap``); None when it is at the
    cap already."""
    body = orjson.loads(upstream_body)
    current = body.get("max_tokens")
    if not isinstance(current, int) or current >= cap:
        return None
    body["max_tokens"] = min(2 * current, cap)
    return orjson.dumps(body)


def auto_tools(settings: Settings, pool: str) -> bool:
    """Whether the pool's engines run a tool-call parser (``tool_choice`` auto)."""
    return any(p.name == pool and p.tool_call_parser for p in settings.engine_pools())


def refusal_of(judgement: Judgement) -> OutputInvalid:
    """The 422 for an answer still invalid after its retry: ``output_truncated`` when it was
    cut by max_tokens, else ``output_schema_violation``."""
    errors = "; ".join(judgement.errors)
    if judgement.truncated:
        return OutputTruncated(
            "The model's answer was cut by max_tokens (finish_reason 'length') before its "
            f"JSON was complete, also with a larger budget: {errors}. Send a larger "
            "'max_tokens'."
        )
    return OutputInvalid(f"The model's answer does not follow its schema: {errors}")
