"""The top-level answer fields drift monitoring bins, and each answer's values of them. Pure.

Worked out once per contract from its schema's top-level ``properties`` (through local ``$ref``
and ``allOf``): a field is a *category* when its value is one of few (``enum`` or ``const``, a
boolean, a string with ``maxLength`` of at most 32, an integer whose ``minimum`` and ``maximum``
are at most 20 apart, as an urgency from 1 to 3), a *number* when it is any other integer or
number. Free text, objects and arrays are not binned.

When an answer is judged, its values of these fields are kept in its request record: categories
as strings (``true``, ``2``, ``billing``), numbers as numbers. Drift monitoring bins them from
there with aggregate queries, whether or not the record keeps the answer's body.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

from service.guard.fields import CATEGORICAL_MAX_LENGTH

# Field names go into JSON paths of SQL queries and metric labels: plain names only.
FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_FIELDS = 16
MAX_INTEGER_SPAN = 20
MAX_VALUE_CHARS = 64
MAX_REF_DEPTH = 8


class FieldKind(StrEnum):
    CATEGORY = "category"
    NUMBER = "number"


FieldValue = str | float | int


def output_field_kinds(schema: Mapping[str, Any] | None) -> dict[str, FieldKind]:
    """Top-level field name -> kind, for the fields worth binning (at most ``MAX_FIELDS``)."""
    if not isinstance(schema, Mapping):
        return {}
    kinds: dict[str, FieldKind] = {}
    for root in _facets(schema, schema, 0):
        properties = root.get("properties")
        if not isinstance(properties, Mapping):
            continue
        for name, node in properties.items():
            if len(kinds) >= MAX_FIELDS:
                return kinds
            if name in kinds or not isinstance(name, str) or not FIELD_NAME.match(name):
                continue
            kind = _kind(node, schema)
            if kind is not None:
                kinds[name] = kind
    return kinds


def field_values(value: object, kinds: Mapping[str, FieldKind]) -> dict[str, FieldValue] | None:
    """An answer's values of the binned fields (None when it is not a JSON object or has none)."""
    if not kinds or not isinstance(value, dict):
        return None
    found: dict[str, FieldValue] = {}
    for name, kind in kinds.items():
        if name not in value:
            continue
        item = value[name]
        if kind is FieldKind.NUMBER:
            if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
                found[name] = item
        elif (label := category_label(item)) is not None:
            found[name] = label
    return found or None


def category_label(item: object) -> str | None:
    """A scalar as the label it is binned under; None for objects and arrays."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if item is None:
        return "null"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        return str(int(item)) if item.is_integer() else repr(item)
    if isinstance(item, str):
        return item[:MAX_VALUE_CHARS]
    return None


def _kind(node: object, schema: Mapping[str, Any]) -> FieldKind | None:
    facets = list(_facets(node, schema, 0))
    if any("enum" in f or "const" in f for f in facets):
        return FieldKind.CATEGORY
    types: set[str] = set()
    for facet in facets:
        declared = facet.get("type")
        types.update([declared] if isinstance(declared, str) else declared or [])
    if types == {"boolean"}:
        return FieldKind.CATEGORY
    if types == {"string"}:
        lengths = [f["maxLength"] for f in facets if isinstance(f.get("maxLength"), int)]
        return FieldKind.CATEGORY if lengths and min(lengths) <= CATEGORICAL_MAX_LENGTH else None
    if types == {"integer"}:
        low = [f["minimum"] for f in facets if isinstance(f.get("minimum"), int | float)]
        high = [f["maximum"] for f in facets if isinstance(f.get("maximum"), int | float)]
        if low and high and min(high) - max(low) <= MAX_INTEGER_SPAN:
            return FieldKind.CATEGORY
        return FieldKind.NUMBER
    if types and types <= {"integer", "number"}:
        return FieldKind.NUMBER
    return None


def _facets(node: object, schema: Mapping[str, Any], depth: int) -> Iterator[Mapping[str, Any]]:
    """The schema objects that all hold at one place: the node, its local ``$ref`` target and
    its ``allOf`` members, followed ``MAX_REF_DEPTH`` deep."""
    if not isinstance(node, Mapping) or depth > MAX_REF_DEPTH:
        return
    yield node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        yield from _facets(_pointer(schema, ref[1:]), schema, depth + 1)
    members = node.get("allOf")
    if isinstance(members, list):
        for member in members:
            yield from _facets(member, schema, depth + 1)


def _pointer(schema: Mapping[str, Any], pointer: str) -> object:
    node: object = schema
    for raw in pointer.split("/")[1:] if pointer else []:
        segment = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(segment)
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return None
    return node
