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
MAX_PATTERN_CHARS = 1_000
MAX_REPEAT_COUNT = 1_000
MAX_BOUND = 100_000
MAX_ENUM = 1_000
MAX_ERRORS = 5
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

Rule = Literal[
    "type", "json", "depth", "size", "meta-schema", "ref", "id", "schema-uri", "dynamic-ref",
    "pattern", "bound", "enum",
    "annotation", "confidence-fields",  # refused when a route's contract is built (guard.fields)
]  # fmt: skip
_OUT_OF_RANGE: frozenset[Rule] = frozenset({"depth", "size", "bound", "enum"})
_BOUND_KEYWORDS = (
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
    "minContains", "maxContains",
)  # fmt: skip
# Keywords that apply a subschema to the same instance: a cycle through these (and $ref) never
# descends into the answer, so validating it would recurse until the stack runs out.
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_IN_PLACE_ONE = ("not", "if", "then", "else")


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
class Validation:
    """An answer checked against a contract. `value` is the parsed answer whenever it parsed."""

    valid: bool
    value: object | None
    errors: tuple[str, ...]


def check_contract(
    schema: object, *, max_bytes: int = MAX_SCHEMA_BYTES, max_depth: int = MAX_SCHEMA_DEPTH
) -> None:
    """Raise SchemaRefused unless `schema` is a bounded, local, well-formed 2020-12 schema."""
    if not isinstance(schema, dict):
        raise SchemaRefused("type", "", "a schema must be a JSON object")
    _check_shape(schema, max_depth)
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise SchemaRefused("size", "", f"{size} bytes is larger than {max_bytes} bytes")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaRefused("meta-schema", _pointer(exc.path), str(exc.message)) from exc
    _Keywords(schema).check()


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
    """Depth and JSON-ness, walked with a stack so that 1,000 levels cannot exhaust recursion."""
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
    # Each entry: items, then (inside a repeat, inside an unbounded one, largest enclosing max).
    stack: list[tuple[Any, tuple[bool, bool, int]]] = [(parsed, (False, False, 1))]
    while stack:
        items, (repeated, unbounded, outer_max) = stack.pop()
        for op, av in items:
            if op in _REPEATS:
                low, high, body = av
                if low > MAX_REPEAT_COUNT or MAX_REPEAT_COUNT < high != _UNBOUNDED:
                    return f"a repeat count above {MAX_REPEAT_COUNT}"
                if repeated and low != high and (unbounded or high == _UNBOUNDED or outer_max > 10):
                    return "nested quantifiers"
                if high > 1:
                    context = (True, unbounded or high == _UNBOUNDED, max(outer_max, high))
                    stack.append((body, context))
                else:
                    stack.append((body, (repeated, unbounded, outer_max)))
            elif op is _sre.BRANCH:
                if repeated and _alternatives_overlap(av[1]):
                    return "alternatives that overlap inside a repeat"
                stack.extend((alt, (repeated, unbounded, outer_max)) for alt in av[1])
            elif op is _sre.SUBPATTERN:
                stack.append((av[3], (repeated, unbounded, outer_max)))
            elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
                stack.append((av[1], (repeated, unbounded, outer_max)))
            elif op is _sre.ATOMIC_GROUP:
                stack.append((av, (repeated, unbounded, outer_max)))
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
