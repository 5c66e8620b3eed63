"""Which fields of an answer its confidence is taken from, resolved once per route contract.

A token's probability judges a value the model *chooses* among few (a category, a number, a
flag). It says little about a value the model *composes*: the tokens of a free-text field are
unlikely because many phrasings fit, not because the answer is wrong. So by default the answer's
score comes from its categorical fields, whose schema makes the value one of few:

- `enum` or `const`;
- type boolean, integer, number or null;
- a string with `maxLength` of at most CATEGORICAL_MAX_LENGTH characters (32: room for a label,
  a code or an id, short of a sentence).

Every other value is free text. A `format` (date, email, ...) does not make a string categorical:
in 2020-12 `format` is an annotation that the gateway does not assert, so such a value is only as
short as its `maxLength` says.

Overrides, strongest first: a review policy's `confidence_fields` (JSON pointers; an array index
stands for the array's items; a pointer to an object or array takes every leaf under it) decides
alone; else the annotation `"x-loragate-confidence": true | false` on the nearest schema that
applies at the field or above it; else the default above.

Where several schemas apply, `$ref`, `allOf` and sibling keywords all hold at once, so one of them
making the value categorical is enough; of `anyOf`/`oneOf`, every branch that could apply must
(a branch cannot apply where its `type` or `additionalProperties: false` rules the field out).
What this cannot tell (unknown keys next to `patternProperties`, more schema than the budgets
below) is free text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from service.guard.picks import Pick, is_index, pick_tree, segments, sub_pick
from service.guard.refused import SchemaRefused, escape

CATEGORICAL_MAX_LENGTH = 32
ANNOTATION = "x-loragate-confidence"
MAX_LOCATIONS = 2_000  # distinct places of an answer resolved per contract; past it: free text
MAX_STEPS = 5_000  # schema visits spent on anyOf/oneOf branches per contract; past it: free text
MAX_BRANCH_NESTING = 32

_SCALARS = frozenset({"boolean", "integer", "number", "null"})
_SCALARS_OR_STRING = _SCALARS | {"string"}

Starts = frozenset[str]  # pointers of schemas (in the contract) that all apply at one place


class _Shape:
    """What applies at one place of an answer: every schema of `starts`, and for each group (the
    branches of an anyOf/oneOf at or above the place), one of its branches. Shapes nest and key
    the resolver's tables, so the hash is computed once."""

    __slots__ = ("_hash", "groups", "starts")

    def __init__(self, starts: Starts, groups: frozenset[Group] = frozenset()) -> None:
        self.starts = starts
        self.groups = groups
        self._hash = hash((starts, groups))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Shape):
            return NotImplemented
        return self is other or (
            self._hash == other._hash
            and self.starts == other.starts
            and self.groups == other.groups
        )


Group = tuple[_Shape, ...]


_NOWHERE = _Shape(frozenset())
_Key = tuple[_Shape, bool | None, Pick | None]
# A numeric segment is an array index, an object key, or unsure where the value may be either.
Numbers = Literal["index", "key", "unsure"]


@dataclass(slots=True, eq=False)
class _Location:
    """One place of an answer, resolved. Filled once when the contract is built, then only read;
    places share locations (a recursive schema makes the graph cyclic)."""

    counted: bool = False
    known: bool = True  # some schema speaks of this place: a policy pointer may name it
    numbers: Numbers = "index"  # what a numeric segment is here
    keys: dict[str, _Location] = field(default_factory=dict)
    other: _Location | None = None  # keys not in `keys`
    prefix: tuple[_Location, ...] = ()
    rest: _Location | None = None  # indexes past `prefix`
    unsure: _Location | None = None  # a numeric segment where the value may be either

    def step(self, segment: str) -> _Location:
        found = self.keys.get(segment)
        if found is not None:
            return found
        if self.numbers == "key" or not is_index(segment):
            found = self.other
        elif self.numbers == "index":
            index = int(segment)
            found = self.prefix[index] if index < len(self.prefix) else self.rest
        else:
            found = self.unsure
        return found if found is not None else self


class ConfidenceFields:
    """Which leaves of an answer its score is taken from, for one contract (see the module).

    Built once per route contract: the schema is resolved into places then, and `counts` is a
    few dictionary steps per leaf. Raises SchemaRefused for a malformed annotation, or a policy
    pointer that names no place of the schema."""

    __slots__ = ("_root",)

    def __init__(self, schema: Mapping[str, Any], picks: Sequence[str] | None = None) -> None:
        self._root = _Resolver(schema).resolve(pick_tree(picks))
        for pointer in picks or ():
            if not self._locate(pointer).known:
                raise SchemaRefused(
                    "confidence-fields", pointer, "names no field of the output schema"
                )

    def counts(self, pointer: str) -> bool:
        """Whether the leaf at this JSON pointer of an answer counts towards its score."""
        return self._locate(pointer).counted

    def _locate(self, pointer: str) -> _Location:
        location = self._root
        for segment in segments(pointer):
            location = location.step(segment)
        return location


class _Resolver:
    """Walks one schema into `_Location`s; instance state lives only while it runs."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.anchors: dict[str, str] = {}
        self.done: dict[_Key, _Location] = {}
        self.closures: dict[Starts, _Closed] = {}
        self.todo: list[tuple[_Location, _Key]] = []
        self.steps = MAX_STEPS
        self._index(schema)

    def resolve(self, pick: Pick | None) -> _Location:
        root = self._location(_Shape(frozenset({""})), None, pick)
        while self.todo:
            location, key = self.todo.pop()
            self._fill(location, *key)
        return root

    # --- the schema -----------------------------------------------------------------------------

    def _index(self, schema: Mapping[str, Any]) -> None:
        stack: list[tuple[object, str]] = [(schema, "")]
        while stack:
            node, pointer = stack.pop()
            if isinstance(node, dict):
                self.nodes[pointer] = node
                anchor = node.get("$anchor")
                if isinstance(anchor, str):
                    self.anchors.setdefault(anchor, pointer)
                stack.extend((child, f"{pointer}/{escape(k)}") for k, child in node.items())
            elif isinstance(node, list):
                stack.extend((child, f"{pointer}/{i}") for i, child in enumerate(node))

    def _target(self, ref: str) -> str | None:
        fragment = unquote(ref[1:]) if ref.startswith("#") else None
        if fragment is None or (fragment and not fragment.startswith("/")):
            return self.anchors.get(fragment or "")
        return fragment

    def _closure(self, starts: Starts) -> _Closed:
        found = self.closures.get(starts)
        if found is None:
            found = self.closures[starts] = self._close(starts)
        return found

    def _close(self, starts: Iterable[str], have: frozenset[str] = frozenset()) -> _Closed:
        """Every schema that applies with `starts` ($ref, allOf), and their anyOf/oneOf."""
        nodes: set[str] = set()
        groups: list[Group] = []
        todo = list(starts)
        while todo:
            pointer = todo.pop()
            node = self.nodes.get(pointer)
            if node is None or pointer in nodes or pointer in have:
                continue
            nodes.add(pointer)
            mark = node.get(ANNOTATION, False)
            if not isinstance(mark, bool):
                raise SchemaRefused("annotation", pointer, f"'{ANNOTATION}' must be true or false")
            ref = node.get("$ref")
            target = self._target(ref) if isinstance(ref, str) else None
            if target is not None:
                todo.append(target)
            todo.extend(_members(node, pointer, "allOf"))
            for keyword in ("anyOf", "oneOf"):
                if isinstance(node.get(keyword), list):
                    members = _members(node, pointer, keyword)
                    groups.append(tuple(_Shape(frozenset({p})) for p in members))
        return _Closed(frozenset(nodes), tuple(groups))

    # --- places ---------------------------------------------------------------------------------

    def _location(self, shape: _Shape, inherited: bool | None, pick: Pick | None) -> _Location:
        if len(self.done) >= MAX_LOCATIONS:
            shape = _NOWHERE
        key: _Key = (shape, inherited, pick)
        found = self.done.get(key)
        if found is None:
            found = self.done[key] = _Location()
            self.todo.append((found, key))
        return found

    def _fill(
        self, location: _Location, shape: _Shape, inherited: bool | None, pick: Pick | None
    ) -> None:
        closed = self._closure(shape.starts)
        groups = (*closed.groups, *shape.groups)
        if pick is not None:
            location.counted = pick.whole
        else:
            mark = self._annotation(closed.nodes)
            inherited = mark if mark is not None else inherited
            if inherited is not None:
                location.counted = inherited
            else:
                location.counted = self._counted(frozenset(), closed.nodes, groups, 0)
        location.known = bool(shape.starts or shape.groups)
        location.numbers = self._numbers(closed.nodes, groups)
        if location.numbers == "unsure":  # nothing is known of what lies there
            location.unsure = self._location(_NOWHERE, inherited, sub_pick(pick, None))
        every, complete = self._every(closed.nodes, groups)
        names = {name for nodes in every for name in self._properties(nodes)}
        if pick is not None:
            names.update(s for s, _ in pick.below if location.numbers == "key" or not is_index(s))
        for name in sorted(names):
            child = self._child(closed.nodes, groups, name)
            location.keys[name] = self._location(child, inherited, sub_pick(pick, name))
        if not complete:  # past the budget: keys and indexes not seen above are unknown
            location.other = location.rest = self._location(
                _NOWHERE, inherited, sub_pick(pick, None)
            )
            return
        other = self._child(closed.nodes, groups, None)
        location.other = self._location(other, inherited, sub_pick(pick, None))
        width = max((self._prefix_length(nodes) for nodes in every), default=0)
        location.prefix = tuple(
            self._location(self._child(closed.nodes, groups, i), inherited, sub_pick(pick, str(i)))
            for i in range(width)
        )
        rest = self._child(closed.nodes, groups, width, rest=True)
        location.rest = self._location(rest, inherited, pick.items(width) if pick else None)

    def _every(
        self, nodes: frozenset[str], groups: Iterable[Group]
    ) -> tuple[list[frozenset[str]], bool]:
        """The schemas at a place and those of every branch of its groups, nested ones too; and
        whether that is all of them (False past the budget)."""
        every = [nodes]
        todo = [branch for group in groups for branch in group]
        while todo:
            if not self._spend(1):
                return every, False
            branch = todo.pop()
            closed = self._closure(branch.starts)
            every.append(closed.nodes)
            todo.extend(b for group in (*closed.groups, *branch.groups) for b in group)
        return every, True

    def _child(
        self, nodes: frozenset[str], groups: Iterable[Group], step: str | int | None,
        *, rest: bool = False,
    ) -> _Shape:  # fmt: skip
        """The shape at key `step` (None: a key no schema names) or index `step` below."""
        starts: set[str] = set()
        for pointer in nodes:
            starts |= self._below(pointer, step, rest) or frozenset()
        below: set[Group] = set()
        for group in groups:
            if not self._spend(len(group)):
                continue  # past the budget what the group says is left out: less is known
            options = (self._branch_child(branch, step, rest) for branch in group)
            kept = tuple(dict.fromkeys(child for child in options if child is not None))
            if len(kept) == 1:  # the one branch that can hold the child: it applies
                starts |= kept[0].starts
                below |= kept[0].groups
            elif kept:
                below.add(kept)
        return _Shape(frozenset(starts), frozenset(below))

    def _branch_child(self, branch: _Shape, step: str | int | None, rest: bool) -> _Shape | None:
        """What a branch says of the child; None when the branch could not hold that child."""
        closed = self._closure(branch.starts)
        if not self._may_be(closed.nodes, "object" if isinstance(step, str | None) else "array"):
            return None
        # A key no schema names here is not ruled out by `additionalProperties: false`: what
        # names it may lie past the budget.
        if step is not None and any(self._below(p, step, rest) is None for p in closed.nodes):
            return None
        return self._child(closed.nodes, (*closed.groups, *branch.groups), step, rest=rest)

    def _spend(self, steps: int) -> bool:
        """Take from the budget for anyOf/oneOf branches; False once it is spent."""
        self.steps -= steps
        return self.steps >= 0

    def _below(self, pointer: str, step: str | int | None, rest: bool) -> Starts | None:
        """The subschemas of one schema that apply to a child; None: it forbids the child."""
        node = self.nodes[pointer]
        if isinstance(step, int):
            prefix = node.get("prefixItems")
            if not rest and isinstance(prefix, list) and step < len(prefix):
                return _subschema(prefix[step], f"{pointer}/prefixItems/{step}")
            return _subschema(node.get("items"), f"{pointer}/items")
        properties = node.get("properties")
        patterns = node.get("patternProperties")
        patterns = patterns if isinstance(patterns, dict) else {}
        if step is None:  # a key that no `properties` here names
            # it may match a pattern, and then `additionalProperties` does not apply to it
            return (
                frozenset()
                if patterns
                else _subschema(node.get("additionalProperties"), f"{pointer}/additionalProperties")
            )
        found: set[str] = set()
        matched = False
        if isinstance(properties, dict) and step in properties:
            found, matched = {f"{pointer}/properties/{escape(step)}"}, True
            if properties[step] is False:
                return None
        for pattern, sub in patterns.items():
            if re.search(pattern, step):
                if sub is False:
                    return None
                found.add(f"{pointer}/patternProperties/{escape(pattern)}")
                matched = True
        if matched:
            return frozenset(found)
        return _subschema(node.get("additionalProperties"), f"{pointer}/additionalProperties")

    def _properties(self, nodes: Iterable[str]) -> list[str]:
        names: list[str] = []
        for pointer in nodes:
            properties = self.nodes[pointer].get("properties")
            if isinstance(properties, dict):
                names.extend(properties)
        return names

    def _prefix_length(self, nodes: Iterable[str]) -> int:
        lengths = [len(self.nodes[p].get("prefixItems") or ()) for p in nodes]
        return max(lengths, default=0)

    def _numbers(self, nodes: frozenset[str], groups: Sequence[Group]) -> Numbers:
        array, object_ = (
            self._may_be(nodes, kind)
            and all(
                any(self._may_be(self._closure(b.starts).nodes, kind) for b in g) for g in groups
            )
            for kind in ("array", "object")
        )
        return "unsure" if array and object_ else ("index" if array else "key")

    def _may_be(self, nodes: Iterable[str], kind: str) -> bool:
        return all(kind in _types(self.nodes[p]) for p in nodes if "type" in self.nodes[p])

    # --- the verdict ----------------------------------------------------------------------------

    def _annotation(self, nodes: Iterable[str]) -> bool | None:
        marks = {self.nodes[p][ANNOTATION] for p in nodes if ANNOTATION in self.nodes[p]}
        if len(marks) == 1:
            return bool(marks.pop())
        return False if marks else None  # true and false at one place: in doubt

    def _counted(
        self, context: frozenset[str], fresh: frozenset[str], groups: Sequence[Group], depth: int
    ) -> bool:
        """The default for a place, or (depth > 0) for an anyOf/oneOf branch at it: `fresh`
        within `context`, where the branch's own annotation decides first."""
        mark = self._annotation(fresh) if depth else None
        if mark is not None:
            return mark
        nodes = context | fresh
        if self._categorical(nodes):
            return True
        for group in groups:
            if depth >= MAX_BRANCH_NESTING or not self._spend(len(group)):
                return False
            if all(self._branch_counted(nodes, branch, depth) for branch in group):
                return True
        return False

    def _branch_counted(self, context: frozenset[str], branch: _Shape, depth: int) -> bool:
        closed = self._close(branch.starts, have=context)
        groups = (*closed.groups, *branch.groups)
        return self._counted(context, closed.nodes, groups, depth + 1)

    def _categorical(self, nodes: Iterable[str]) -> bool:
        schemas = [self.nodes[p] for p in nodes]
        if any("enum" in s or "const" in s for s in schemas):
            return True
        types = [_types(s) for s in schemas if "type" in s]
        if any(t <= _SCALARS for t in types):
            return True
        return any(t <= _SCALARS_OR_STRING for t in types) and any(map(_short, schemas))


@dataclass(frozen=True, slots=True)
class _Closed:
    nodes: frozenset[str]
    groups: tuple[Group, ...]


def _types(node: Mapping[str, Any]) -> frozenset[str]:
    declared = node.get("type")
    names = [declared] if isinstance(declared, str) else declared
    return (
        frozenset(t for t in names if isinstance(t, str))
        if isinstance(names, list)
        else frozenset()
    )


def _short(node: Mapping[str, Any]) -> bool:
    bound = node.get("maxLength")
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        return False
    return bound <= CATEGORICAL_MAX_LENGTH


def _members(node: Mapping[str, Any], pointer: str, keyword: str) -> list[str]:
    """The subschemas of a list keyword, as pointers (the schema `true` as a missing node);
    a `false` member is left out: it can never be the branch that applies."""
    members = node.get(keyword)
    if not isinstance(members, list):
        return []
    return [f"{pointer}/{keyword}/{i}" for i, member in enumerate(members) if member is not False]


def _subschema(schema: object, pointer: str) -> Starts | None:
    """Where a child's schema starts: None for `false` (no child may be there), nothing for
    `true` or a keyword left out (nothing is said of the child)."""
    if schema is False:
        return None
    return frozenset({pointer}) if isinstance(schema, dict) else frozenset()
