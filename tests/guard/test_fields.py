"""Which fields an answer's confidence is taken from: resolved from the schema once per contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.dataset import example_data
from service.guard import CATEGORICAL_MAX_LENGTH, ConfidenceFields, SchemaRefused, check_contract
from service.guard import fields as guard_fields
from service.guard.fields import ANNOTATION


def counted(schema: dict[str, Any], *pointers: str, picks: list[str] | None = None) -> set[str]:
    check_contract(schema)  # every schema here is one a route may carry
    fields = ConfidenceFields(schema, picks)
    return {pointer for pointer in pointers if fields.counts(pointer)}


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def test_the_bundled_ticket_schema_counts_category_and_urgency_not_the_free_text() -> None:
    schema = json.loads(example_data("tickets.schema.json").read_text())
    assert counted(schema, "/category", "/urgency", "/next_action") == {"/category", "/urgency"}


@pytest.mark.parametrize(
    ("field", "categorical"),
    [
        ({"enum": ["a", "b"]}, True),
        ({"const": "x"}, True),
        ({"type": "boolean"}, True),
        ({"type": "integer"}, True),
        ({"type": "number"}, True),
        ({"type": "null"}, True),
        ({"type": ["integer", "null"]}, True),
        ({"type": "string", "maxLength": CATEGORICAL_MAX_LENGTH}, True),
        ({"type": ["string", "null"], "maxLength": 8}, True),
        ({"type": "string", "maxLength": CATEGORICAL_MAX_LENGTH + 1}, False),
        ({"type": "string"}, False),
        ({"type": "string", "format": "date"}, False),  # format is not asserted: not bounded
        ({"type": "string", "format": "email", "maxLength": 10}, True),
        ({"maxLength": 5}, False),  # no type: could be any value
        ({}, False),
        ({"type": "array", "items": {"type": "integer"}}, False),  # an empty array's leaf
    ],
)
def test_the_default_classification(field: dict[str, Any], categorical: bool) -> None:
    assert counted(obj(x=field), "/x") == ({"/x"} if categorical else set())


def test_the_annotation_counts_or_ignores_a_field() -> None:
    schema = obj(
        note={"type": "string", ANNOTATION: True},
        flag={"type": "boolean", ANNOTATION: False},
        plain={"type": "string"},
    )
    assert counted(schema, "/note", "/flag", "/plain") == {"/note"}


def test_an_annotation_on_a_container_holds_for_every_field_under_it_unless_overridden() -> None:
    schema = obj(
        tags={"type": "array", "items": {"type": "string"}, ANNOTATION: True},
        meta={
            **obj(a={"type": "integer"}, b={"type": "integer", ANNOTATION: True}),
            ANNOTATION: False,
        },
    )
    assert counted(schema, "/tags", "/tags/0", "/tags/9", "/meta/a", "/meta/b") == {
        "/tags", "/tags/0", "/tags/9", "/meta/b",
    }  # fmt: skip


def test_the_annotation_passes_the_route_schema_checks() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **obj(note={"type": "string", ANNOTATION: True}),
    }
    check_contract(schema)  # unknown keywords are annotations in 2020-12


@pytest.mark.parametrize("mark", ["yes", 1, None])
def test_an_annotation_that_is_not_a_boolean_is_refused(mark: object) -> None:
    schema = obj(note={"type": "string", ANNOTATION: mark})
    with pytest.raises(SchemaRefused, match="annotation") as refused:
        ConfidenceFields(schema)
    assert refused.value.pointer == "/properties/note"


def test_a_policy_list_decides_alone() -> None:
    schema = obj(
        category={"enum": ["a", "b"]},
        urgency={"type": "integer", ANNOTATION: True},
        note={"type": "string"},
    )
    everything = ("/category", "/urgency", "/note")
    assert counted(schema, *everything, picks=["/note"]) == {"/note"}
    assert counted(schema, *everything, picks=["/category", "/note"]) == {"/category", "/note"}


def test_a_policy_pointer_into_an_array_stands_for_every_item() -> None:
    schema = obj(
        lines={"type": "array", "items": obj(sku={"type": "string"}, qty={"type": "integer"})},
        pair={"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}]},
    )
    picks = ["/lines/0/sku", "/pair/1"]
    assert counted(schema, "/lines/0/sku", "/lines/7/sku", "/lines/7/qty", "/pair/0", "/pair/1",
                   picks=picks) == {"/lines/0/sku", "/lines/7/sku", "/pair/1"}  # fmt: skip


def test_a_policy_pointer_to_a_container_takes_every_field_under_it() -> None:
    schema = obj(meta=obj(a={"type": "string"}, b=obj(c={"type": "string"})), x={"type": "integer"})
    assert counted(schema, "/meta/a", "/meta/b/c", "/x", picks=["/meta"]) == {
        "/meta/a",
        "/meta/b/c",
    }


@pytest.mark.parametrize("pointer", ["/categroy", "/category/0", "/lines/x"])
def test_a_policy_pointer_that_names_no_field_is_refused(pointer: str) -> None:
    schema = obj(category={"enum": ["a"]}, lines={"type": "array", "items": {"type": "integer"}})
    schema["additionalProperties"] = False
    with pytest.raises(SchemaRefused, match="confidence-fields"):
        ConfidenceFields(schema, [pointer])


def test_a_policy_may_name_a_key_that_only_additional_properties_describe() -> None:
    schema = obj(scores={"type": "object", "additionalProperties": {"type": "string"}})
    assert counted(schema, "/scores/alice", "/scores/bob", picks=["/scores/alice"]) == {
        "/scores/alice"
    }


def test_local_refs_and_items_are_followed() -> None:
    schema = {
        **obj(
            items={"type": "array", "items": {"$ref": "#/$defs/Line"}},
            kind={"$ref": "#/$defs/Kind", "description": "siblings of $ref hold as well"},
            anchored={"$ref": "#short"},
            pair={
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "items": {"type": "boolean"},
            },
        ),
        "$defs": {
            "Kind": {"enum": ["a", "b"]},
            "Line": obj(name={"type": "string", "maxLength": 20}, text={"type": "string"}),
            "Short": {"$anchor": "short", "type": "string", "maxLength": 4},
        },
    }
    found = counted(
        schema, "/items/0/name", "/items/12/name", "/items/3/text", "/kind", "/anchored",
        "/pair/0", "/pair/1", "/pair/2", "/pair/30",
    )  # fmt: skip
    assert found == {
        "/items/0/name", "/items/12/name", "/kind", "/anchored", "/pair/0", "/pair/2", "/pair/30",
    }  # fmt: skip


def test_a_recursive_schema_resolves_at_any_depth() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": obj(
                label={"enum": ["x", "y"]},
                note={"type": "string"},
                kids={"type": "array", "items": {"$ref": "#/$defs/Node"}},
            )
        },
    }
    deep = "/kids/0" * 40
    assert counted(schema, "/label", f"{deep}/label", f"{deep}/note") == {"/label", f"{deep}/label"}


def test_all_of_combines_its_members() -> None:
    schema = obj(
        short={"allOf": [{"type": "string"}, {"maxLength": 10}]},
        long={"allOf": [{"type": "string"}, {"minLength": 10}]},
    )
    assert counted(schema, "/short", "/long") == {"/short"}


def test_any_of_counts_only_when_every_branch_is_categorical() -> None:
    schema = obj(
        mixed={"anyOf": [{"enum": ["x"]}, {"type": "string"}]},
        nullable={"anyOf": [{"enum": ["x", "y"]}, {"type": "null"}]},
        either={"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
        bounded={"type": "string", "anyOf": [{"maxLength": 5}, {"enum": ["long enough"]}]},
        annotated={"anyOf": [{"type": "string", ANNOTATION: True}, {"type": "null"}]},
    )
    found = counted(schema, "/mixed", "/nullable", "/either", "/bounded", "/annotated")
    assert found == {"/nullable", "/either", "/bounded", "/annotated"}


def test_fields_under_a_union_follow_the_branches_that_could_hold_them() -> None:
    line = obj(kind={"const": "line"}, qty={"type": "integer"}, text={"type": "string"})
    note = obj(kind={"const": "note"}, text={"type": "string"})
    loose = obj(kind={"const": "loose"})  # other keys allowed, and unconstrained
    closed = {**note, "additionalProperties": False}
    schema = obj(
        entry={"oneOf": [line, closed]},  # qty only fits `line`: an integer
        open={"anyOf": [line, loose]},  # qty may also be anything under `loose`
        address={"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
    )
    schema["$defs"] = {"Address": obj(zip={"type": "string", "maxLength": 10})}
    found = counted(
        schema, "/entry/kind", "/entry/qty", "/entry/text", "/open/kind", "/open/qty",
        "/address/zip",
    )  # fmt: skip
    assert found == {"/entry/kind", "/entry/qty", "/open/kind", "/address/zip"}


def test_keys_that_pattern_properties_may_describe_are_free_text() -> None:
    schema = obj(
        codes={"type": "object", "patternProperties": {"^c_": {"type": "integer"}},
               "additionalProperties": {"type": "integer"}},
        counts={"type": "object", "additionalProperties": {"type": "integer"}},
    )  # fmt: skip
    assert counted(schema, "/codes/c_1", "/codes/other", "/counts/x") == {"/counts/x"}


def test_a_pointer_with_escapes_is_unescaped() -> None:
    schema = obj(**{"a/b": {"type": "integer"}, "m~n": {"type": "string"}})
    assert counted(schema, "/a~1b", "/m~0n") == {"/a~1b"}


def test_many_unions_over_shared_definitions_resolve() -> None:
    props = {f"p{i}": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]} for i in range(200)}
    schema = {**obj(**props), "$defs": {"A": obj(v={"type": "integer"}), "B": {"type": "null"}}}
    assert counted(schema, "/p0/v", "/p199/v", "/p5") == {"/p0/v", "/p199/v"}


def test_past_the_budget_of_places_fields_are_free_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard_fields, "MAX_LOCATIONS", 3)
    schema = obj(a={"type": "integer"}, b=obj(c=obj(d={"type": "integer"})))
    assert counted(schema, "/a", "/b/c/d") == {"/a"}
