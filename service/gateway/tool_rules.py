"""A chat request's tools: what a client may send, and what an engine pool must support. Pure.

``tools``, ``tool_choice`` and ``parallel_tool_calls`` pass through to vLLM. With
``tool_choice`` ``required`` or a named function vLLM constrains the answer to the tools'
schemas (structured outputs) on any engine; ``auto`` (the default when tools are sent) needs an
engine started with a tool-call parser (``--enable-auto-tool-choice --tool-call-parser``), so a
pool without one refuses it here, with 400, rather than letting the engine answer with an
error the client cannot act on. Each tool's ``parameters`` schema is bounded like a
``response_format`` schema (the caller checks it in full, off the event loop).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from service.errors import InvalidRequest, UnsupportedParameter, ValueOutOfRange
from service.guard import SchemaRefused

MAX_TOOLS = 64
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_DESCRIPTION_CHARS = 4096
TOOL_CHOICES = frozenset({"none", "auto", "required"})
FUNCTION_FIELDS = frozenset({"name", "description", "parameters", "strict"})


def tool_schemas(payload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each tool's ``parameters`` schema by its name, from a checked body (empty without tools;
    a tool without parameters takes an object of any fields)."""
    schemas: dict[str, dict[str, Any]] = {}
    for tool in payload.get("tools") or ():
        function = tool["function"]
        schemas[function["name"]] = function.get("parameters") or {"type": "object"}
    return schemas


def check_tools(
    body: Mapping[str, Any], bounds: Callable[[dict[str, Any]], int], *, auto_tools: bool
) -> int:
    """Check ``tools``, ``tool_choice`` and ``parallel_tool_calls``; the summed cost of the
    tools' schemas. ``auto_tools``: the route's engines run a tool-call parser."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if choice is not None and choice != "none":
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
        if body.get("parallel_tool_calls") is not None:
            raise InvalidRequest(
                "'parallel_tool_calls' needs 'tools'.", param="parallel_tool_calls"
            )
        return 0
    if not isinstance(tools, list) or not tools:
        raise InvalidRequest("'tools' must be a non-empty list of functions.", param="tools")
    if len(tools) > MAX_TOOLS:
        raise ValueOutOfRange(f"'tools' may hold at most {MAX_TOOLS} functions.", param="tools")
    names: set[str] = set()
    cost = 0
    for tool in tools:
        name, schema = _function(tool)
        if name in names:
            raise InvalidRequest(f"Two tools are named '{name}'.", param="tools")
        names.add(name)
        if schema is not None:
            try:
                cost += bounds(schema)
            except SchemaRefused as exc:
                error = ValueOutOfRange if exc.out_of_range else InvalidRequest
                raise error(f"Tool '{name}' parameters: {exc}", param="tools") from exc
    _check_choice(choice, names, auto_tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "'parallel_tool_calls' must be true or false.", param="parallel_tool_calls"
        )
    return cost


def _function(tool: Any) -> tuple[str, dict[str, Any] | None]:
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or set(tool) - {"type", "function"}
    ):
        raise InvalidRequest(
            "Each tool must be {'type': 'function', 'function': {...}}.", param="tools"
        )
    function = tool.get("function")
    if not isinstance(function, dict) or set(function) - FUNCTION_FIELDS:
        raise InvalidRequest(
            f"A tool's 'function' may hold only {sorted(FUNCTION_FIELDS)}.", param="tools"
        )
    name = function.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise InvalidRequest(
            "A tool's name must be 1-64 letters, digits, '_' or '-'.", param="tools"
        )
    description = function.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS
    ):
        raise InvalidRequest(
            f"A tool's description must be a string of at most {MAX_DESCRIPTION_CHARS} characters.",
            param="tools",
        )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest("A tool's 'strict' must be true or false.", param="tools")
    schema = function.get("parameters")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(
            f"Tool '{name}' parameters must be a JSON Schema object.", param="tools"
        )
    return name, schema


def _check_choice(choice: Any, names: set[str], auto_tools: bool) -> None:
    if choice is None or choice == "auto":
        if not auto_tools:
            raise UnsupportedParameter(
                "This route's engines run no tool-call parser, so they cannot choose whether to "
                "call a tool ('tool_choice': 'auto', the default with 'tools'); send "
                "'tool_choice': 'required' or a named function, which the engine enforces "
                "with structured outputs, or ask the operator to set the pool's "
                "'tool_call_parser'.",
                param="tool_choice",
            )
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidRequest(
                f"'tool_choice' must be one of {sorted(TOOL_CHOICES)} or a named function.",
                param="tool_choice",
            )
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if (
        not isinstance(choice, dict)
        or choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise InvalidRequest(
            "A named 'tool_choice' is {'type': 'function', 'function': {'name': ...}}.",
            param="tool_choice",
        )
    if name not in names:
        raise InvalidRequest(
            f"'tool_choice' names '{name}', which is not in 'tools'.", param="tool_choice"
        )
