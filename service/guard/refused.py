"""Why a schema is refused: ``SchemaRefused``, with the rule it broke and where (a JSON pointer)."""

from __future__ import annotations

from typing import Literal

Rule = Literal[
    "type", "json", "depth", "size", "cost", "meta-schema", "ref", "id", "schema-uri",
    "dynamic-ref", "pattern", "bound", "enum",
    "annotation", "confidence-fields",  # refused when a route's contract is built (guard.fields)
]  # fmt: skip
_OUT_OF_RANGE: frozenset[Rule] = frozenset({"depth", "size", "cost", "bound", "enum"})
OUT_OF_RANGE: frozenset[Rule] = frozenset({"depth", "size", "cost", "bound", "enum"})


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
        return self.rule in OUT_OF_RANGE


def escape(key: str) -> str:
    """One JSON pointer segment."""
    return key.replace("~", "~0").replace("/", "~1")
