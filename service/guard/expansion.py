"""What a schema forces or expands to, beyond its own size: nested minimums multiplied out
(``ForcedSizes``) and every `$ref` written out in place (``expanded_cost``). Both walk the
subschemas a node applies, from the root, each subschema once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.guard.refused import SchemaRefused, escape

# The schema with every `$ref` written out in place, in the same units. jsonschema walks that
# per answer where references sit under `allOf`/`anyOf`/`oneOf` (a binary tree of 14 `$defs`
# took 0.4-0.9 s per answer here; one of 60, 3 KiB, would be 2^60 units), and so does a grammar
# compiler that writes references out (outlines_core 0.2.14 does, to a fixed depth; xgrammar
# 0.2.8 makes one rule per definition). At the bound, 8,189 units took 36-82 ms per answer. The
# largest schema in the tests expands to 2,604 (cost 1,211); the bundled contract and the
# chart's values schema do not expand at all.
MAX_EXPANDED_COST = 10_000
MAX_BOUND = 100_000  # the largest size bound, and product of nested minimums, accepted
# Keywords that force an answer to hold at least N of something (items, properties, characters).
MINIMUM_KEYWORDS = ("minItems", "minProperties", "minLength", "minContains")
# Where a subschema sits under a node (2020-12, and the `dependencies` it still knows).
SUBSCHEMA_ONE = (
    "additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)  # fmt: skip
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas", "dependencies")


class ForcedSizes:
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
        found = [node.get(keyword) for keyword in MINIMUM_KEYWORDS]
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
    for keyword in SUBSCHEMA_ONE:
        child = node.get(keyword)
        if isinstance(child, list):
            children.extend(f"{pointer}/{keyword}/{i}" for i in range(len(child)))
        elif child is not None:
            children.append(f"{pointer}/{keyword}")
    for keyword in SUBSCHEMA_LISTS:
        if isinstance(node.get(keyword), list):
            children.extend(f"{pointer}/{keyword}/{i}" for i in range(len(node[keyword])))
    for keyword in SUBSCHEMA_MAPS:
        if isinstance(node.get(keyword), dict):
            children.extend(f"{pointer}/{keyword}/{escape(k)}" for k in node[keyword])
    if pointer in targets:
        children.append(targets[pointer])
    return children


def expanded_cost(nodes: dict[str, dict[str, Any]], targets: dict[str, str]) -> int:
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
