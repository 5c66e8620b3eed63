"""Output contracts: which JSON Schemas (Draft 2020-12) are accepted, and checking answers.

The same `check_contract` bounds a route's configured schema and a client's
`response_format.json_schema.schema`: both are forwarded to the engine's grammar compiler and
run by jsonschema in this process, so either could take one of them down.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from service.guard.expansion import (
    MAX_BOUND,
    SUBSCHEMA_LISTS,
    SUBSCHEMA_MAPS,
    SUBSCHEMA_ONE,
    ForcedSizes,
    expanded_cost,
)
from service.guard.patterns import BadPattern, pattern_states
from service.guard.refused import SchemaRefused, escape

MAX_SCHEMA_BYTES = 16_384
MAX_SCHEMA_DEPTH = 24
# The work a check may take, in subschemas plus their keywords, counted before the meta-schema
# runs: jsonschema's 2020-12 meta-schema costs 0.13-0.25 ms per unit on a server CPU core, so
# one check stays under about 500 ms (in a worker process). 16 KiB of ordinary properties stay
# under it; 16 KiB of `{}` in an `anyOf` would be 5,300 units, 1-2 s.
MAX_SCHEMA_COST = 2_000
# Pattern states (see guard.patterns) of all patterns together, each counted where it sits:
# xgrammar converts each pattern on its own, the cost growing with its repeat counts (10 of
# `a{1000}` took 406 ms, 40 took 1.6 s; 16 KiB of them would take about 13 s), while 16 KiB of
# ordinary patterns (250 of `^[a-z]{1,20}-\d{4}$`, 6,250 states) took 12 ms. The chart's
# values schema holds 581.
MAX_SCHEMA_PATTERN_STATES = 10_000
MAX_ENUM = 1_000
MAX_ERRORS = 5
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

_BOUND_KEYWORDS = (
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "minContains", "maxContains",
)  # fmt: skip
# Keywords that apply a subschema to the same instance: a cycle through these (and $ref) never
# descends into the answer, so validating it would recurse until the stack runs out.
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONE = ("not", "if", "then", "else")
# Where 2020-12 (and the `definitions`/`dependencies` it still knows) holds subschemas: the
# meta-schema validates each one, so these are what a check's cost counts.
_DEFINITIONS = ("$defs", "definitions")
_ONE = frozenset(SUBSCHEMA_ONE)
_LISTS = frozenset(SUBSCHEMA_LISTS)
_MAPS = frozenset(SUBSCHEMA_MAPS + _DEFINITIONS)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A SchemaRefused as plain data: it crosses to and from a worker process (pickled)."""

    message: str
    out_of_range: bool


def refusal(schema: object) -> Refusal | None:
    """`check_contract` as a function of plain data: None when the schema is accepted."""
    try:
        check_contract(schema)
    except SchemaRefused as exc:
        return Refusal(str(exc), exc.out_of_range)
    return None


@dataclass(frozen=True, slots=True)
class Validation:
    """An answer checked against a contract. `value` is the parsed answer whenever it parsed."""

    valid: bool
    value: object | None
    errors: tuple[str, ...]


def check_contract(
    schema: object, *, max_bytes: int = MAX_SCHEMA_BYTES, max_depth: int = MAX_SCHEMA_DEPTH
) -> None:
    """Raise SchemaRefused unless `schema` is a bounded, local, well-formed 2020-12 schema.

    The cheap bounds come first (`check_bounds`), so the costly part, the meta-schema, only
    ever runs on a schema whose work is bounded."""
    check_bounds(schema, max_bytes=max_bytes, max_depth=max_depth)
    assert isinstance(schema, dict)  # check_bounds refuses anything else
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaRefused("meta-schema", _pointer(exc.path), str(exc.message)) from exc
    _Keywords(schema).check()


def check_bounds(
    schema: object, *, max_bytes: int = MAX_SCHEMA_BYTES, max_depth: int = MAX_SCHEMA_DEPTH
) -> int:
    """The cheap part of `check_contract`, linear in the schema's size (about 2 ms for 16 KiB):
    a JSON object, its depth, its bytes and its cost. Returns the cost (see MAX_SCHEMA_COST)."""
    if not isinstance(schema, dict):
        raise SchemaRefused("type", "", "a schema must be a JSON object")
    _check_shape(schema, max_depth)
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise SchemaRefused("size", "", f"{size} bytes is larger than {max_bytes} bytes")
    cost = schema_cost(schema)
    if cost > MAX_SCHEMA_COST:
        raise SchemaRefused(
            "cost",
            "",
            f"more than {MAX_SCHEMA_COST} subschemas and keywords (each one costs a check "
            "against the meta-schema; split the schema or drop alternatives)",
        )
    return cost


def schema_cost(schema: object) -> int:
    """Subschemas plus their keywords, stopping once past MAX_SCHEMA_COST (a JSON value)."""
    cost = 0
    stack: list[object] = [schema]
    while stack and cost <= MAX_SCHEMA_COST:
        node = stack.pop()
        cost += 1
        if type(node) is not dict:
            continue
        cost += len(node)
        for keyword, child in node.items():
            if keyword in _ONE:
                if type(child) is list:
                    stack.extend(child)
                else:
                    stack.append(child)
            elif keyword in _LISTS:
                if type(child) is list:
                    stack.extend(child)
            elif keyword in _MAPS and type(child) is dict:
                stack.extend(child.values())
    return cost


class ContractValidator:
    """Validates answer texts against one checked contract; build once per schema and reuse."""

    __slots__ = ("_validator",)

    def __init__(self, schema: object, *, checked: bool = False) -> None:
        """``checked``: ``check_contract`` already accepted this schema (a client's, checked
        off the event loop), so it is not run again."""
        if not checked:
            check_contract(schema)
        own = json.loads(json.dumps(schema))  # a private copy the caller cannot edit later
        self._validator = Draft202012Validator(own, registry=_NO_REMOTE, format_checker=None)

    def validate(self, text: str, finish_reason: str | None = None) -> Validation:
        try:
            value = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            errors: tuple[str, ...] = ("not JSON",)
            if finish_reason == "length":
                errors = ("truncated at max_tokens", *errors)
            return Validation(False, None, errors)
        if finish_reason == "length":
            return Validation(False, value, ("truncated at max_tokens",))
        try:
            found = list(islice(self._validator.iter_errors(value), MAX_ERRORS))
        except RecursionError:
            return Validation(False, value, ("nests too deeply to validate",))
        messages = tuple(
            f"{_pointer(error.absolute_path) or '(root)'}: {_shorten(str(error.message))}"
            for error in found
        )
        return Validation(not messages, value, messages)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _retrieve_nothing(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


# Contracts only hold local references; this makes sure no reference could ever be fetched.
_NO_REMOTE: Registry[Any] = Registry(retrieve=_retrieve_nothing)  # type: ignore[call-arg]


def _shorten(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _pointer(path: Iterable[object]) -> str:
    return "".join(f"/{escape(str(part))}" for part in path)


def _check_shape(schema: dict[str, Any], max_depth: int) -> None:
    """Depth and JSON-ness, walked with a stack so that 1,000 levels cannot exhaust recursion.

    The first walk builds no pointers (it runs on the event loop for every client schema); only
    a schema it finds at fault is walked again to say where."""
    if not _shape_is_sound(schema, max_depth):
        _refuse_shape(schema, max_depth)


_SCALARS = (str, int, bool, type(None))


def _shape_is_sound(schema: dict[str, Any], max_depth: int) -> bool:
    """Level by level, building nothing per node: about 0.3 µs a node."""
    level: list[Any] = [schema]
    depth = 1
    while level:
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is dict:
                if depth > max_depth:
                    return False
                for key in node:
                    if type(key) is not str:
                        return False
                below.extend(node.values())
            elif kind is list:
                if depth > max_depth:
                    return False
                below.extend(node)
            elif kind is float:
                if not math.isfinite(node):
                    return False
            elif kind not in _SCALARS:
                return False
        level = below
        depth += 1
    return True


def _refuse_shape(schema: dict[str, Any], max_depth: int) -> None:
    """The walk of `_check_shape` with pointers: raises SchemaRefused at the fault (it returns
    only for what the fast walk alone refuses, such as a subclass of dict, which is sound)."""
    stack: list[tuple[object, str, int]] = [(schema, "", 1)]
    while stack:
        node, pointer, depth = stack.pop()
        if isinstance(node, dict):
            if any(not isinstance(key, str) for key in node):
                raise SchemaRefused("json", pointer, "object keys must be strings")
            children: list[tuple[str, object]] = list(node.items())
        elif isinstance(node, list):
            children = [(str(index), child) for index, child in enumerate(node)]
        elif isinstance(node, float) and not math.isfinite(node):
            raise SchemaRefused("json", pointer, f"{node} is not a JSON number")
        elif node is None or isinstance(node, str | int | float):
            continue
        else:
            raise SchemaRefused("json", pointer, f"a {type(node).__name__} is not a JSON value")
        if depth > max_depth:
            raise SchemaRefused("depth", pointer, f"nests deeper than {max_depth} levels")
        stack.extend((child, f"{pointer}/{escape(key)}", depth + 1) for key, child in children)


class _Keywords:
    """The keyword rules. Every object in the schema is inspected, data under `enum`, `const`
    or `default` included: conservative, since a local `$ref` may point anywhere."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.nodes: dict[str, dict[str, Any]] = {}
        self.anchors: dict[str, str] = {}
        self.refs: list[tuple[str, str]] = []
        self.pattern_states = 0

    def check(self) -> None:
        stack: list[tuple[object, str]] = [(self.root, "")]
        while stack:
            node, pointer = stack.pop()
            if isinstance(node, list):
                stack.extend((child, f"{pointer}/{i}") for i, child in enumerate(node))
            elif isinstance(node, dict):
                self.nodes[pointer] = node
                self._check_object(node, pointer)
                stack.extend((child, f"{pointer}/{escape(k)}") for k, child in node.items())
        targets = {pointer: self._resolve(pointer, ref) for pointer, ref in self.refs}
        self._refuse_ref_cycles(targets)
        ForcedSizes(self.nodes, targets).check()
        expanded_cost(self.nodes, targets)

    def _check_object(self, node: dict[str, Any], pointer: str) -> None:
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in node:
                raise SchemaRefused("dynamic-ref", pointer, f"'{keyword}' is not supported")
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#"):
                raise SchemaRefused(
                    "ref", pointer, f"only local '$ref' (starting with '#') are allowed: {ref!r}"
                )
            self.refs.append((pointer, ref))
        uri = node.get("$schema")
        if isinstance(uri, str) and uri.rstrip("#") != DRAFT_2020_12:
            raise SchemaRefused("schema-uri", pointer, f"'$schema' must be {DRAFT_2020_12}")
        identifier = node.get("$id")
        if isinstance(identifier, str):
            _check_id(identifier, pointer)
        for keyword in ("$anchor", "$dynamicAnchor"):
            if isinstance(node.get(keyword), str):
                self.anchors.setdefault(node[keyword], pointer)
        if isinstance(node.get("pattern"), str):
            self._check_pattern(node["pattern"], f"{pointer}/pattern")
        if isinstance(node.get("patternProperties"), dict):
            for key in node["patternProperties"]:
                self._check_pattern(key, f"{pointer}/patternProperties/{escape(key)}")
        for keyword in _BOUND_KEYWORDS:
            bound = node.get(keyword)
            if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > MAX_BOUND:
                raise SchemaRefused(
                    "bound", f"{pointer}/{keyword}", f"{bound} is above {MAX_BOUND}"
                )
        members = node.get("enum")
        if isinstance(members, list) and len(members) > MAX_ENUM:
            raise SchemaRefused(
                "enum", f"{pointer}/enum", f"{len(members)} members, more than {MAX_ENUM}"
            )

    def _check_pattern(self, pattern: str, pointer: str) -> None:
        try:
            self.pattern_states += pattern_states(pattern)
        except BadPattern as exc:
            raise SchemaRefused("pattern", pointer, f"{exc}: {_shorten(pattern, 80)!r}") from None
        if self.pattern_states > MAX_SCHEMA_PATTERN_STATES:
            raise SchemaRefused(
                "cost",
                pointer,
                f"the patterns up to here add up to {self.pattern_states} states, more than "
                f"{MAX_SCHEMA_PATTERN_STATES} for the whole schema (the engine compiles each "
                "pattern on its own; a state is a character or class, repeats written out)",
            )

    def _resolve(self, pointer: str, ref: str) -> str:
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            if fragment not in self.anchors:
                raise SchemaRefused("ref", pointer, f"no '$anchor' named {fragment!r}")
            return self.anchors[fragment]
        node: object = self.root
        target = ""
        for raw in fragment.split("/")[1:]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and re.fullmatch(r"0|[1-9][0-9]*", part):
                node = node[int(part)] if int(part) < len(node) else None
            else:
                node = None
            if node is None:
                raise SchemaRefused("ref", pointer, f"{ref!r} points at nothing")
            target += f"/{escape(part)}"
        if not isinstance(node, dict | bool):
            raise SchemaRefused("ref", pointer, f"{ref!r} does not point at a schema")
        return target

    def _refuse_ref_cycles(self, targets: dict[str, str]) -> None:
        """Refuse a `$ref` loop that never descends into the answer, e.g. {"$ref": "#"}."""
        done: set[str] = set()
        for start in self.nodes:
            if start in done:
                continue
            path: set[str] = {start}
            stack: list[tuple[str, list[str]]] = [(start, self._edges(start, targets))]
            while stack:
                current, edges = stack[-1]
                if not edges:
                    stack.pop()
                    path.discard(current)
                    done.add(current)
                    continue
                follow = edges.pop()
                if follow in path:
                    raise SchemaRefused("ref", follow, "'$ref' loops without consuming input")
                if follow not in done and follow in self.nodes:
                    path.add(follow)
                    stack.append((follow, self._edges(follow, targets)))

    def _edges(self, pointer: str, targets: dict[str, str]) -> list[str]:
        node = self.nodes[pointer]
        edges = [f"{pointer}/{key}" for key in _IN_PLACE_ONE if isinstance(node.get(key), dict)]
        for key in _IN_PLACE_LISTS:
            if isinstance(node.get(key), list):
                edges.extend(f"{pointer}/{key}/{i}" for i in range(len(node[key])))
        dependent = node.get("dependentSchemas")
        if isinstance(dependent, dict):
            edges.extend(f"{pointer}/dependentSchemas/{escape(k)}" for k in dependent)
        if pointer in targets:
            edges.append(targets[pointer])
        return edges


def _check_id(identifier: str, pointer: str) -> None:
    if pointer:
        raise SchemaRefused("id", pointer, "'$id' is only allowed at the root")
    parts = urlsplit(identifier)
    if parts.netloc or parts.scheme not in ("", "urn", "tag"):
        raise SchemaRefused("id", pointer, f"'$id' must not name a remote document: {identifier!r}")
