"""Tool calls under contract: each call's arguments checked against its tool's own parameters
schema, the call scored from its tokens, and calls compared between two answers. Pure.

Under ``tool_choice`` ``required`` or a named function vLLM writes the calls as a JSON array
under a grammar (``[{"name": ..., "parameters": {...}}]``): the tokens then add up to JSON whose
leaf values are the call's names and arguments, scored like a schema answer's value tokens.
Under ``auto`` the model writes the calls in its own format (``<tool_call>{...}</tool_call>``),
which is not JSON as a whole: scored by its sequence probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from service.guard.confidence import Confidence, Tokens, score_free, score_json
from service.guard.schema import ContractValidator, Validation

TRUNCATED = "truncated at max_tokens"


def calls_of(message: object) -> list[Mapping[str, Any]]:
    """A message's (or a rebuilt stream's) tool calls; empty when it made none."""
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    if not isinstance(calls, list):
        return []
    return [call for call in calls if isinstance(call, Mapping)]


def _function(call: Mapping[str, Any]) -> tuple[str, str]:
    function = call.get("function")
    if not isinstance(function, Mapping):
        return "", ""
    name, arguments = function.get("name"), function.get("arguments")
    return (name if isinstance(name, str) else ""), (
        arguments if isinstance(arguments, str) else ""
    )


def validate_calls(
    calls: Sequence[Mapping[str, Any]],
    tools: Mapping[str, ContractValidator],
    finish_reason: str | None,
) -> Validation:
    """Every call names a tool of the request and its arguments follow that tool's schema.
    The value is ``[{"name": ..., "arguments": {...}}]`` (arguments parsed, None if not JSON)."""
    errors: list[str] = []
    value: list[dict[str, Any]] = []
    if finish_reason == "length":
        errors.append(TRUNCATED)
    for index, call in enumerate(calls):
        name, arguments = _function(call)
        where = f"tool_calls/{index} ({name or 'no name'})"
        validator = tools.get(name)
        if validator is None:
            errors.append(f"{where}: no tool of this request has this name")
            value.append({"name": name, "arguments": None})
            continue
        checked = validator.validate(arguments)
        value.append({"name": name, "arguments": checked.value})
        errors.extend(f"{where}: {error}" for error in checked.errors)
    return Validation(not errors, value, tuple(errors))


def score_calls(tokens: Tokens | None) -> Confidence | None:
    """The calls' confidence from the tokens the engine wrote for them."""
    if not tokens:
        return None
    text = "".join(str(token.get("token", "")) for token in tokens)
    try:
        json.loads(text)
    except ValueError:
        return score_free(tokens)
    return score_json(text, tokens)


def comparable_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    """Calls as a JSON object a shadow comparison reads field by field: each call's name and
    its arguments (parsed when they are JSON) compared on their own."""
    fields: dict[str, Any] = {}
    for index, call in enumerate(calls):
        name, arguments = _function(call)
        try:
            parsed: Any = json.loads(arguments)
        except ValueError:
            parsed = arguments
        fields[f"tool_calls/{index}/name"] = name
        fields[f"tool_calls/{index}/arguments"] = parsed
    return json.dumps(fields, sort_keys=True)
