"""Output contracts: which JSON Schemas (Draft 2020-12) are accepted, and checking answers.

The same `check_contract` bounds a route's configured schema and a client's
`response_format.json_schema.schema`: both are forwarded to the engine's grammar compiler and
run by jsonschema in this process, so either could take one of them down.
"""

from __future__ import annotations

import importlib
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

MAX_SCHEMA_BYTES = 16_384
MAX_SCHEMA_DEPTH = 24
# The work a check may take, in subschemas plus their keywords, counted before the meta-schema
# runs: jsonschema's 2020-12 meta-schema costs 0.13-0.25 ms per unit on a server CPU core, so
# one check stays under about 500 ms (in a worker process). 16 KiB of ordinary properties stay
# under it; 16 KiB of `{}` in an `anyOf` would be 5,300 units, 1-2 s.
MAX_SCHEMA_COST = 2_000
MAX_PATTERN_CHARS = 1_000
MAX_REPEAT_COUNT = 1_000
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
            _check_pattern(node["pattern"], f"{pointer}/pattern")
        if isinstance(node.get("patternProperties"), dict):
            for key in node["patternProperties"]:
                _check_pattern(key, f"{pointer}/patternProperties/{_escape(key)}")
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
        node = self.nodes[pointer]
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
        if pointer in self.targets:
            children.append(self.targets[pointer])
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


def _check_id(identifier: str, pointer: str) -> None:
    if pointer:
        raise SchemaRefused("id", pointer, "'$id' is only allowed at the root")
    parts = urlsplit(identifier)
    if parts.netloc or parts.scheme not in ("", "urn", "tag"):
        raise SchemaRefused("id", pointer, f"'$id' must not name a remote document: {identifier!r}")


# --- regular expressions ----------------------------------------------------------------------
# Python's own parser is private but has been stable in shape since 3.11; jsonschema runs
# patterns with `re`, so a pattern that `re` cannot parse is refused anyway.
_parser: Any = importlib.import_module("re._parser")
_sre: Any = importlib.import_module("re._constants")
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)
_UNBOUNDED: int = _sre.MAXREPEAT
_TOP = 0x10FFFF
_ASCII_AND_BEYOND = ((0x80, _TOP),)
_CATEGORIES: dict[Any, tuple[tuple[int, int], ...]] = {
    _sre.CATEGORY_DIGIT: ((48, 57), *_ASCII_AND_BEYOND),
    _sre.CATEGORY_WORD: ((48, 57), (65, 90), (95, 95), (97, 122), *_ASCII_AND_BEYOND),
    _sre.CATEGORY_SPACE: ((9, 13), (28, 32), *_ASCII_AND_BEYOND),
}
_Chars = frozenset[tuple[int, int]] | None  # code point ranges a match can start with; None: any


def _check_pattern(pattern: str, pointer: str) -> None:
    problem = _pattern_problem(pattern)
    if problem:
        raise SchemaRefused("pattern", pointer, f"{problem}: {_shorten(pattern, 80)!r}")


def _pattern_problem(pattern: str) -> str | None:
    """A conservative static check against catastrophic backtracking (ReDoS).

    Inside a part that repeats, it refuses a quantifier of variable length when either one is
    unbounded (`(a+)+b`, `(a*)*`, `(.*a){20}`), and alternatives that can start with the same
    character (`(a|a)+`, `(a|aa)+`). Sound patterns are sometimes refused too (`([a-z]+\\.)*`);
    they can nearly always be written without the nesting.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"longer than {MAX_PATTERN_CHARS} characters"
    try:
        parsed = _parser.parse(pattern)
        return _walk_pattern(parsed)
    except (re.error, OverflowError) as exc:
        return f"not a regular expression ({exc})"
    except RecursionError:
        return "nests too deeply"


def _walk_pattern(parsed: Any) -> str | None:
    # Each entry: items, then (inside a repeat, inside an unbounded one, largest enclosing max,
    # the product of the enclosing counts: `((a{999}){999}){999}` is 10^9 `a`s, not 999).
    stack: list[tuple[Any, tuple[bool, bool, int, int]]] = [(parsed, (False, False, 1, 1))]
    while stack:
        items, context = stack.pop()
        repeated, unbounded, outer_max, product = context
        for op, av in items:
            if op in _REPEATS:
                low, high, body = av
                if low > MAX_REPEAT_COUNT or MAX_REPEAT_COUNT < high != _UNBOUNDED:
                    return f"a repeat count above {MAX_REPEAT_COUNT}"
                if repeated and low != high and (unbounded or high == _UNBOUNDED or outer_max > 10):
                    return "nested quantifiers"
                # An unbounded repeat is a loop (its minimum is what it forces); a bounded one
                # is written out up to its maximum by the engine's grammar compiler.
                count = product * (max(low, 1) if high == _UNBOUNDED else max(high, 1))
                if count > MAX_REPEAT_COUNT:
                    return f"nested repeat counts that multiply to more than {MAX_REPEAT_COUNT}"
                if high > 1:
                    inner = (True, unbounded or high == _UNBOUNDED, max(outer_max, high), count)
                    stack.append((body, inner))
                else:
                    stack.append((body, (repeated, unbounded, outer_max, count)))
            elif op is _sre.BRANCH:
                if repeated and _alternatives_overlap(av[1]):
                    return "alternatives that overlap inside a repeat"
                stack.extend((alt, context) for alt in av[1])
            elif op is _sre.SUBPATTERN:
                stack.append((av[3], context))
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                stack.append((av[1], context))
            elif op is _sre.ATOMIC_GROUP:
                stack.append((av, context))
            elif op in (_sre.GROUPREF, _sre.GROUPREF_EXISTS):
                return "a backreference"
    return None


def _alternatives_overlap(alternatives: list[Any]) -> bool:
    seen: list[frozenset[tuple[int, int]]] = []
    for alternative in alternatives:
        chars, nullable = _first_chars(alternative)
        # An empty alternative is followed by something this check cannot see: assume overlap.
        if chars is None or nullable:
            return len(alternatives) > 1
        if any(_ranges_meet(chars, other) for other in seen):
            return True
        seen.append(chars)
    return False


def _ranges_meet(a: frozenset[tuple[int, int]], b: frozenset[tuple[int, int]]) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _first_chars(items: Any) -> tuple[_Chars, bool]:
    """What a match of `items` can start with, and whether it can match the empty string."""
    found: set[tuple[int, int]] = set()
    for op, av in items:
        chars, nullable = _first_of(op, av)
        if chars is None:
            return None, False
        found |= chars
        if not nullable:
            return frozenset(found), False
    return frozenset(found), True


def _first_of(op: Any, av: Any) -> tuple[_Chars, bool]:
    if op is _sre.LITERAL:
        return _literal(av), False
    if op is _sre.IN:
        return _set_chars(av), False
    if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
        return frozenset(), True
    if op is _sre.SUBPATTERN:
        return _first_chars(av[3])
    if op is _sre.ATOMIC_GROUP:
        return _first_chars(av)
    if op in _REPEATS:
        chars, nullable = _first_chars(av[2])
        return chars, nullable or av[0] == 0
    if op is _sre.BRANCH:
        union: set[tuple[int, int]] = set()
        any_nullable = False
        for alternative in av[1]:
            chars, nullable = _first_chars(alternative)
            if chars is None:
                return None, False
            union |= chars
            any_nullable = any_nullable or nullable
        return frozenset(union), any_nullable
    return None, False  # ANY, NOT_LITERAL, backreferences, ...: could start with anything


def _literal(code: int) -> frozenset[tuple[int, int]]:
    # Both cases, in case the pattern is case-insensitive; a superset is safe here.
    variants = {chr(code), chr(code).lower(), chr(code).upper()}
    return frozenset((ord(c), ord(c)) for c in variants if len(c) == 1)


def _set_chars(members: Any) -> _Chars:
    ranges: set[tuple[int, int]] = set()
    for op, av in members:
        if op is _sre.LITERAL:
            ranges |= _literal(av)
        elif op is _sre.RANGE:
            ranges.add((av[0], av[1]))
        elif op is _sre.CATEGORY and av in _CATEGORIES:
            ranges.update(_CATEGORIES[av])
        else:  # NEGATE, other categories
            return None
    return frozenset(ranges)
