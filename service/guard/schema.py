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
from typing import Any, Literal, NoReturn
from urllib.parse import unquote, urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from service.guard.patterns import BadPattern, pattern_states

MAX_SCHEMA_BYTES = 16_384
MAX_SCHEMA_DEPTH = 24
# The work a check may take, in subschemas plus their keywords, counted before the meta-schema
# runs: jsonschema's 2020-12 meta-schema costs 0.13-0.25 ms per unit on a server CPU core, so
# one check stays under about 500 ms (in a worker process). 16 KiB of ordinary properties stay
# under it; 16 KiB of `{}` in an `anyOf` would be 5,300 units, 1-2 s.
MAX_SCHEMA_COST = 2_000
# The schema with every `$ref` written out in place, in the same units. jsonschema walks that
# per answer where references sit under `allOf`/`anyOf`/`oneOf` (a binary tree of 14 `$defs`
# took 0.4-0.9 s per answer here; one of 60, 3 KiB, would be 2^60 units), and so does a grammar
# compiler that writes references out (outlines_core 0.2.14 does, to a fixed depth; xgrammar
# 0.2.8 makes one rule per definition). At the bound, 8,189 units took 36-82 ms per answer. The
# largest schema in the tests expands to 2,604 (cost 1,211); the bundled contract and the
# chart's values schema do not expand at all.
MAX_EXPANDED_COST = 10_000
# Pattern states (see guard.patterns) of all patterns together, each counted where it sits:
# xgrammar converts each pattern on its own, the cost growing with its repeat counts (10 of
# `a{1000}` took 406 ms, 40 took 1.6 s; 16 KiB of them would take about 13 s), while 16 KiB of
# ordinary patterns (250 of `^[a-z]{1,20}-\d{4}$`, 6,250 states) took 12 ms. The chart's
# values schema holds 581.
MAX_SCHEMA_PATTERN_STATES = 10_000
MAX_BOUND = 100_000
MAX_ENUM = 1_000
MAX_ERRORS = 5
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

Rule = Literal[
    "type", "json", "depth", "size", "cost", "meta-schema", "ref", "id", "schema-uri",
    "dynamic-ref", "pattern", "bound", "enum",
    "annotation", "confidence-fields",  # refused when a route's contract is built (guard.fields)
]  # fmt: skip
_OUT_OF_RANGE: frozenset[Rule] = frozenset({"depth", "size", "cost", "bound", "enum"})
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
_SUBSCHEMA_ONE = (
    "additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)  # fmt: skip
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas", "dependencies")
_DEFINITIONS = ("$defs", "definitions")
_ONE = frozenset(_SUBSCHEMA_ONE)
_LISTS = frozenset(_SUBSCHEMA_LISTS)
_MAPS = frozenset(_SUBSCHEMA_MAPS + _DEFINITIONS)
# Keywords that force an answer to hold at least N of something (items, properties, characters).
_MINIMUM_KEYWORDS = ("minItems", "minProperties", "minLength", "minContains")


class SchemaRefused(ValueError):
    """A schema the gateway will not forward or run; `rule` says which bound, `pointer` where."""

    def __init__(self, rule: Rule, pointer: str, detail: str) -> None:
        where = f"at '{pointer}'" if pointer else "at the root"
        super().__init__(f"JSON schema refused ({rule}) {where}: {detail}.")
        self.rule: Rule = rule
        self.pointer = pointer
        self.detail = detail

    @property
    def out_of_range(self) -> bool:
        """True when the schema broke a size bound rather than being malformed or unsafe."""
        return self.rule in _OUT_OF_RANGE


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

    def __init__(self, schema: object) -> None:
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


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer(path: Iterable[object]) -> str:
    return "".join(f"/{_escape(str(part))}" for part in path)


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
        stack.extend((child, f"{pointer}/{_escape(key)}", depth + 1) for key, child in children)


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
                stack.extend((child, f"{pointer}/{_escape(k)}") for k, child in node.items())
        targets = {pointer: self._resolve(pointer, ref) for pointer, ref in self.refs}
        self._refuse_ref_cycles(targets)
        _ForcedSizes(self.nodes, targets).check()
        _expanded_cost(self.nodes, targets)

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
                self._check_pattern(key, f"{pointer}/patternProperties/{_escape(key)}")
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
            target += f"/{_escape(part)}"
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
            edges.extend(f"{pointer}/dependentSchemas/{_escape(k)}" for k in dependent)
        if pointer in targets:
            edges.append(targets[pointer])
        return edges


class _ForcedSizes:
    """Refuse nested minimums whose product is out of bounds: `minItems: 99999` whose items
    need `minProperties: 99999` force an answer of 10^10 properties, though each bound alone
    is allowed. Every path through the subschemas a root applies (nested ones and `$ref`s) is
    multiplied out; a `$ref` loop that multiplies by more than one on each turn forces an
    answer without end. Subschemas applied in place (`allOf`, ...) multiply too, which
    overestimates a little and errs on the safe side."""

    def __init__(self, nodes: dict[str, dict[str, Any]], targets: dict[str, str]) -> None:
        self.nodes = nodes
        self.targets = targets

    def factor(self, pointer: str) -> int:
        node = self.nodes[pointer]
        found = [node.get(keyword) for keyword in _MINIMUM_KEYWORDS]
        counts = [int(v) for v in found if isinstance(v, int | float) and not isinstance(v, bool)]
        return max([1, *counts])

    def edges(self, pointer: str) -> list[str]:
        children = _applied(self.nodes[pointer], pointer, self.targets)
        return [child for child in children if child in self.nodes]  # booleans force nothing

    def check(self) -> None:
        """Tarjan's strongly connected components from the root, then the largest product of
        minimums along any path, component by component (Tarjan emits them leaves first)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        component: dict[str, int] = {}
        best: list[int] = []  # per component: the largest product from it down
        on_stack: list[str] = []
        work: list[tuple[str, list[str]]] = [("", self.edges(""))]
        index[""] = low[""] = 0
        on_stack.append("")
        while work:
            pointer, pending = work[-1]
            if pending:
                child = pending.pop()
                if child not in index:
                    index[child] = low[child] = len(index)
                    on_stack.append(child)
                    work.append((child, self.edges(child)))
                elif child not in component:
                    low[pointer] = min(low[pointer], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[pointer])
            if low[pointer] == index[pointer]:
                members: list[str] = []
                while True:
                    member = on_stack.pop()
                    component[member] = len(best)
                    members.append(member)
                    if member == pointer:
                        break
                best.append(self._component_product(members, component, best))

    def _component_product(
        self, members: list[str], component: dict[str, int], best: list[int]
    ) -> int:
        here = len(best)
        looping = len(members) > 1 or members[0] in self.edges(members[0])
        product = 1
        for member in members:
            factor = self.factor(member)
            if looping and factor > 1:
                raise SchemaRefused(
                    "bound", member, "a minimum size repeats through '$ref' without end"
                )
            below = [best[component[c]] for c in self.edges(member) if component[c] != here]
            product = max(product, factor * max([1, *below]))
            if product > MAX_BOUND:
                raise SchemaRefused(
                    "bound",
                    member,
                    f"nested minimum sizes multiply to more than {MAX_BOUND} (an answer would "
                    "need that many items, properties or characters)",
                )
        return product


def _applied(node: dict[str, Any], pointer: str, targets: dict[str, str]) -> list[str]:
    """Where the subschemas that `node` applies sit: its nested ones (not `$defs`, which apply
    only through a `$ref`) and its `$ref`'s target."""
    children: list[str] = []
    for keyword in _SUBSCHEMA_ONE:
        child = node.get(keyword)
        if isinstance(child, list):
            children.extend(f"{pointer}/{keyword}/{i}" for i in range(len(child)))
        elif child is not None:
            children.append(f"{pointer}/{keyword}")
    for keyword in _SUBSCHEMA_LISTS:
        if isinstance(node.get(keyword), list):
            children.extend(f"{pointer}/{keyword}/{i}" for i in range(len(node[keyword])))
    for keyword in _SUBSCHEMA_MAPS:
        if isinstance(node.get(keyword), dict):
            children.extend(f"{pointer}/{keyword}/{_escape(k)}" for k in node[keyword])
    if pointer in targets:
        children.append(targets[pointer])
    return children


def _expanded_cost(nodes: dict[str, dict[str, Any]], targets: dict[str, str]) -> int:
    """`schema_cost` with every `$ref` written out in place, from the root; SchemaRefused at
    the subschema whose expansion passes MAX_EXPANDED_COST. Each subschema's size is worked
    out once (depth first, without recursion), so a tree of references with 2^60 paths costs
    60 steps. A `$ref` back to a subschema being worked out is recursion that descends into
    the answer (loops that do not were refused before): a compiler makes it a rule, one unit."""
    sizes: dict[str, int] = {}
    work: list[_Frame] = [_Frame("", _applied(nodes[""], "", targets), 1 + len(nodes[""]))]
    opened: set[str] = {""}
    while work:
        frame = work[-1]
        if frame.pending:
            child = frame.pending.pop()
            if child in nodes and child not in sizes and child not in opened:
                opened.add(child)
                own = 1 + len(nodes[child])
                work.append(_Frame(child, _applied(nodes[child], child, targets), own))
                continue
            frame.size += sizes.get(child, 1)  # a boolean subschema, or recursion: one
        else:
            work.pop()
            sizes[frame.pointer] = frame.size
            if work:
                work[-1].size += frame.size
                frame = work[-1]
        if frame.size > MAX_EXPANDED_COST:
            raise SchemaRefused(
                "cost",
                frame.pointer,
                f"with its '$ref's written out in place it holds at least {frame.size} "
                f"subschemas and keywords, more than {MAX_EXPANDED_COST} (a grammar compiler "
                "that inlines references builds all of them, and validating an answer may walk "
                "them all)",
            )
    return sizes[""]


@dataclass(slots=True)
class _Frame:
    pointer: str
    pending: list[str]
    size: int


def _check_id(identifier: str, pointer: str) -> None:
    if pointer:
        raise SchemaRefused("id", pointer, "'$id' is only allowed at the root")
    parts = urlsplit(identifier)
    if parts.netloc or parts.scheme not in ("", "urn", "tag"):
        raise SchemaRefused("id", pointer, f"'$id' must not name a remote document: {identifier!r}")
