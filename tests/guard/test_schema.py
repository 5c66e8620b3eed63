"""Output contracts: which schemas are accepted, and how answers are judged against them."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from referencing.exceptions import Unresolvable

from service.guard import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_COST,
    MAX_SCHEMA_DEPTH,
    ContractValidator,
    SchemaRefused,
    check_bounds,
    check_contract,
)
from service.guard.expansion import MAX_EXPANDED_COST
from service.guard.patterns import MAX_PATTERN_STATES, MAX_REPEAT_OVERLAPS
from service.guard.schema import _NO_REMOTE, MAX_SCHEMA_PATTERN_STATES


def tickets_schema() -> dict[str, Any]:
    text = resources.files("adapters").joinpath("data/tickets.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def refused(schema: object) -> SchemaRefused:
    with pytest.raises(SchemaRefused) as caught:
        check_contract(schema)
    return caught.value


def nested(levels: int) -> dict[str, Any]:
    """A schema of `levels` nested objects (arrays of arrays of ... strings)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


def string_with(pattern: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}


# --- accepted contracts -------------------------------------------------------------------------


def test_the_bundled_tickets_contract_is_accepted() -> None:
    check_contract(tickets_schema())


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {}}},
        {"$defs": {"n": {"$anchor": "name", "type": "string"}}, "$ref": "#name"},
        # recursion that descends into the answer is fine: a tree of nodes
        {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:loragate:t"},
        {"type": "string", "format": "email"},
        {"enum": list(range(1000))},
        {"type": "string", "maxLength": 100_000},
        string_with(r"^[a-z]+$"),
        string_with(r"^\d{3}-\d{4}$"),
        string_with(r"^(\d{1,3}\.){3}\d{1,3}$"),
        string_with(r"^(ab|cd)+$"),
        string_with(r"^[A-Z][a-z]*( [A-Z][a-z]*)?$"),
    ],
)
def test_sound_contracts_are_accepted(schema: dict[str, Any]) -> None:
    check_contract(schema)


def test_a_schema_at_the_depth_limit_is_accepted_and_one_deeper_is_not() -> None:
    check_contract(nested(MAX_SCHEMA_DEPTH))
    assert refused(nested(MAX_SCHEMA_DEPTH + 1)).rule == "depth"


# --- hostile and malformed schemas --------------------------------------------------------------


def test_a_schema_1000_levels_deep_is_refused_without_recursion_error() -> None:
    error = refused(nested(1000))
    assert error.rule == "depth"
    assert error.out_of_range
    assert str(MAX_SCHEMA_DEPTH) in str(error)
    assert error.pointer.startswith("/items/items/")


@pytest.mark.parametrize("value", [[], "schema", None, 12, True])
def test_a_schema_must_be_an_object(value: object) -> None:
    assert refused(value).rule == "type"


def test_a_schema_larger_than_the_byte_limit_is_refused() -> None:
    properties = {f"field_{i}": {"type": "string", "description": "x" * 40} for i in range(400)}
    error = refused({"type": "object", "properties": properties})
    assert error.rule == "size"
    assert error.out_of_range
    assert str(MAX_SCHEMA_BYTES) in str(error)


@pytest.mark.parametrize(
    ("schema", "pointer"),
    [
        ({"type": 12}, "/type"),
        ({"properties": {"a": {"minLength": -1}}}, "/properties/a/minLength"),
    ],
)
def test_a_schema_invalid_under_the_2020_12_meta_schema_is_refused(
    schema: dict[str, Any], pointer: str
) -> None:
    error = refused(schema)
    assert error.rule == "meta-schema"
    assert error.pointer == pointer
    assert pointer in str(error)


@pytest.mark.parametrize(
    "ref", ["https://example.com/s.json", "file:///etc/passwd", "other.json#/a", "//host/s"]
)
def test_a_remote_ref_is_refused(ref: str) -> None:
    error = refused({"type": "object", "properties": {"a": {"$ref": ref}}})
    assert error.rule == "ref"
    assert error.pointer == "/properties/a"
    assert ref in str(error)


def test_a_local_ref_that_points_at_nothing_is_refused() -> None:
    assert refused({"$ref": "#/$defs/missing", "$defs": {}}).rule == "ref"
    assert refused({"$ref": "#nowhere"}).rule == "ref"
    assert refused({"$ref": "#/required", "required": ["a"]}).rule == "ref"


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"anyOf": [{"$ref": "#"}]}}},
        {"properties": {"a": {"not": {"$ref": "#/properties/a"}}}},
    ],
)
def test_a_ref_loop_that_never_descends_is_refused(schema: dict[str, Any]) -> None:
    assert "loops" in str(refused(schema))


@pytest.mark.parametrize("keyword", ["$dynamicRef", "$recursiveRef"])
def test_dynamic_refs_are_refused(keyword: str) -> None:
    error = refused({"$defs": {"a": {keyword: "#"}}})
    assert (error.rule, error.pointer) == ("dynamic-ref", "/$defs/a")


@pytest.mark.parametrize(
    ("schema", "rule"),
    [
        ({"$id": "https://example.com/s.json"}, "id"),
        ({"$id": "file:///tmp/s.json"}, "id"),
        ({"$defs": {"a": {"$id": "inner"}}}, "id"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "schema-uri"),
        ({"$schema": "https://example.com/my-meta"}, "schema-uri"),
    ],
)
def test_ids_and_meta_schemas_naming_other_documents_are_refused(
    schema: dict[str, Any], rule: str
) -> None:
    assert refused(schema).rule == rule


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+b",
        "(a*)*",
        "(a|a)+",
        "(a|aa)+",
        "(.*a){20}",
        "^(\\w+\\s?)*$",
        "(x+x+)+y",
        "(a?){30}",
        "(a)\\1",
        "a{5000}",
        "a" * 1001,
    ],
)
def test_pathological_patterns_are_refused(pattern: str) -> None:
    error = refused(string_with(pattern))
    assert error.rule == "pattern"
    assert error.pointer == "/properties/code/pattern"


def test_pathological_keys_of_pattern_properties_are_refused() -> None:
    error = refused({"type": "object", "patternProperties": {"^(a+)+$": {"type": "string"}}})
    assert (error.rule, error.pointer) == ("pattern", "/patternProperties/^(a+)+$")


def test_patterns_are_checked_wherever_they_sit() -> None:
    assert refused({"propertyNames": {"pattern": "(a*)*"}}).rule == "pattern"
    assert refused({"$defs": {"x": {"items": {"pattern": "(a+)+"}}}}).rule == "pattern"


def test_a_pattern_python_cannot_parse_is_refused() -> None:
    assert refused(string_with("[")).rule in {"meta-schema", "pattern"}


@pytest.mark.parametrize("keyword", ["maxLength", "minLength", "maxItems", "maxProperties"])
def test_size_keywords_above_the_sane_bound_are_refused(keyword: str) -> None:
    error = refused({"type": "object", "properties": {"a": {keyword: 1_000_000}}})
    assert (error.rule, error.pointer) == ("bound", f"/properties/a/{keyword}")
    assert error.out_of_range


def test_a_huge_enum_is_refused() -> None:
    error = refused({"type": "object", "properties": {"a": {"enum": list(range(1001))}}})
    assert (error.rule, error.pointer) == ("enum", "/properties/a/enum")


@pytest.mark.parametrize("schema", [{"const": float("nan")}, {"enum": [{1, 2}]}, {"a": {1: {}}}])
def test_values_that_are_not_json_are_refused(schema: dict[str, Any]) -> None:
    assert refused(schema).rule == "json"


# --- validating answers -------------------------------------------------------------------------


@pytest.fixture
def tickets() -> ContractValidator:
    return ContractValidator(tickets_schema())


def test_a_valid_answer_is_valid(tickets: ContractValidator) -> None:
    text = '{"category": "technical", "urgency": 2, "next_action": "Reset the router"}'
    result = tickets.validate(text, "stop")
    assert result.valid
    assert result.errors == ()
    assert result.value == {
        "category": "technical",
        "urgency": 2,
        "next_action": "Reset the router",
    }


@pytest.mark.parametrize("text", ["", "category: technical", '{"category": ', "NaN", "[1,]"])
def test_text_that_is_not_json_is_invalid(tickets: ContractValidator, text: str) -> None:
    result = tickets.validate(text)
    assert (result.valid, result.value, result.errors) == (False, None, ("not JSON",))


def test_schema_errors_name_the_path(tickets: ContractValidator) -> None:
    result = tickets.validate('{"category": "weather", "urgency": 7, "next_action": "x"}')
    assert not result.valid
    assert result.value == {"category": "weather", "urgency": 7, "next_action": "x"}
    assert any(error.startswith("/category: ") for error in result.errors)
    assert any(error.startswith("/urgency: ") and "maximum" in error for error in result.errors)


def test_at_most_five_errors_are_reported() -> None:
    validator = ContractValidator({"type": "array", "items": {"type": "string"}})
    result = validator.validate(json.dumps(list(range(50))))
    assert not result.valid
    assert len(result.errors) == 5
    assert result.errors[0] == "/0: 0 is not of type 'string'"


def test_a_root_error_is_labelled(tickets: ContractValidator) -> None:
    assert tickets.validate("[]").errors == ("(root): [] is not of type 'object'",)


def test_an_answer_cut_at_max_tokens_is_invalid_even_when_it_parses(
    tickets: ContractValidator,
) -> None:
    text = '{"category": "technical", "urgency": 2, "next_action": "Reset"}'
    result = tickets.validate(text, "length")
    assert not result.valid
    assert result.errors == ("truncated at max_tokens",)
    cut = tickets.validate('{"category": "tech', "length")
    assert cut.errors == ("truncated at max_tokens", "not JSON")


def test_format_is_an_annotation_only() -> None:
    validator = ContractValidator({"type": "string", "format": "email"})
    assert validator.validate('"not an email"').valid


def test_a_validator_checks_its_contract_first() -> None:
    with pytest.raises(SchemaRefused):
        ContractValidator({"$ref": "https://example.com/s.json"})


def test_the_reference_registry_never_fetches() -> None:
    from jsonschema import Draft202012Validator

    remote = Draft202012Validator({"$ref": "https://example.com/s.json"}, registry=_NO_REMOTE)
    with pytest.raises(Unresolvable):
        remote.validate(1)


def test_an_answer_nested_deeper_than_python_recursion_is_invalid() -> None:
    tree = {"$defs": {"n": {"items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}
    validator = ContractValidator(tree)
    assert validator.validate("[" * 50 + "]" * 50).valid
    assert validator.validate("[" * 900 + "]" * 900).errors == ("nests too deeply to validate",)
    assert validator.validate("[" * 5000 + "]" * 5000).errors == ("not JSON",)


# --- work bounds (issue 11: items 1 and 9) ------------------------------------------------------


def test_the_cost_bound_counts_subschemas_and_keywords_before_the_meta_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("the meta-schema ran on a schema over the cost bound")

    monkeypatch.setattr("service.guard.schema.Draft202012Validator.check_schema", never)
    for schema in (
        {"anyOf": [{} for _ in range(5300)]},  # 16 KiB, 1-2 s of meta-schema before the bound
        {"anyOf": [True] * (MAX_SCHEMA_COST + 1)},  # boolean subschemas cost the same
        {"allOf": [{"not": {}}] * 700},  # three units each, 11 bytes
    ):
        error = refused(schema)
        assert (error.rule, error.out_of_range) == ("cost", True)
        assert f"more than {MAX_SCHEMA_COST}" in str(error)


def test_a_schema_under_the_cost_bound_is_checked_whole() -> None:
    schema_at_bound = {"anyOf": [{} for _ in range(MAX_SCHEMA_COST - 2)]}
    assert check_bounds(schema_at_bound) == MAX_SCHEMA_COST
    check_contract(schema_at_bound)
    # Data is not a subschema: a long enum costs two units.
    assert check_bounds({"enum": list(range(1000))}) == 2
    assert refused({"anyOf": [{"type": "strin"}]}).rule == "meta-schema"


@pytest.mark.parametrize(
    "pattern",
    [
        "((a{999}){999}){999}",  # about 10^9 characters written out by a grammar compiler
        "(a{999}){2}",
        "(?:(?:x{40}){40})",
        "(b{2}){501,}",
    ],
)
def test_nested_repeat_counts_multiply(pattern: str) -> None:
    error = refused(string_with(pattern))
    assert error.rule == "pattern"
    assert "multiply to more than 1000" in str(error)


@pytest.mark.parametrize("pattern", ["(a{10}){100}", "(a{999})*", "a{1000}", r"(\d{3}-){3}"])
def test_nested_repeats_within_the_product_are_accepted(pattern: str) -> None:
    check_contract(string_with(pattern))


def test_nested_minimum_sizes_multiply() -> None:
    schema = {"type": "array", "minItems": 99999, "items": {"minProperties": 99999}}
    error = refused(schema)
    assert (error.rule, error.out_of_range) == ("bound", True)
    assert "multiply to more than 100000" in str(error)
    deeper = {"minItems": 50, "items": {"minItems": 50, "items": {"minLength": 50}}}
    assert refused(deeper).rule == "bound"
    # Through `$ref` too.
    through_ref = {
        "$defs": {"row": {"minItems": 1000, "items": {"$ref": "#/$defs/cell"}},
                  "cell": {"minLength": 1000}},
        "$ref": "#/$defs/row",
    }  # fmt: skip
    assert refused(through_ref).rule == "bound"


def test_a_minimum_that_recurses_through_ref_is_refused() -> None:
    tree = {"$defs": {"n": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/n"}}},
            "$ref": "#/$defs/n"}  # fmt: skip
    error = refused(tree)
    assert error.rule == "bound" and "without end" in str(error)


@pytest.mark.parametrize(
    "schema",
    [
        {"minItems": 300, "items": {"minLength": 300}},
        {"minItems": 99999},
        # a definition nobody applies multiplies nothing
        {"minItems": 1000, "$defs": {"big": {"minLength": 1000}}},
        # recursion without a minimum above one is fine (a tree)
        {"type": "object", "properties": {"kids": {"minItems": 1, "items": {"$ref": "#"}}}},
    ],
)
def test_minimums_within_the_product_are_accepted(schema: dict[str, Any]) -> None:
    check_contract(schema)


# --- grammar cost (issue 26, row 12) -------------------------------------------------------------


def ref_tree(levels: int, keyword: str = "anyOf") -> dict[str, Any]:
    """`$defs` d0..d<levels>, each referring to the one below twice: 2^levels paths, tiny."""
    defs: dict[str, Any] = {"d0": {"type": "string"}}
    for i in range(1, levels + 1):
        ref = {"$ref": f"#/$defs/d{i - 1}"}
        if keyword == "properties":
            defs[f"d{i}"] = {"type": "object", "properties": {"a": ref, "b": ref}}
        else:
            defs[f"d{i}"] = {keyword: [ref, ref]}
    return {"$defs": defs, "$ref": f"#/$defs/d{levels}"}


@pytest.mark.parametrize("keyword", ["anyOf", "allOf", "properties"])
def test_a_tree_of_refs_with_2_to_the_60_paths_is_refused_without_walking_them(
    keyword: str,
) -> None:
    schema = ref_tree(60, keyword)
    assert len(json.dumps(schema)) < MAX_SCHEMA_BYTES and check_bounds(schema) < MAX_SCHEMA_COST
    error = refused(schema)  # returns: each definition's size is worked out once
    assert (error.rule, error.out_of_range) == ("cost", True)
    # d_k writes out 2^(k+3) - 6 units (9 * 2^k - 7 with properties): d11 is the first past
    # the bound, and the refusal names it.
    assert error.pointer == "/$defs/d11"
    assert "written out in place" in str(error)
    assert f"more than {MAX_EXPANDED_COST}" in str(error)


def test_refs_written_out_just_under_the_bound_are_accepted() -> None:
    check_contract(ref_tree(10))  # 8,189 units written out
    assert refused(ref_tree(11)).rule == "cost"
    # A definition used in many places, and recursion that descends into the answer, count
    # once per use and once per loop.
    address = {"type": "object", "properties": {"street": {"type": "string"}}}
    uses = {f"a{i}": {"$ref": "#/$defs/address"} for i in range(100)}
    check_contract({"$defs": {"address": address}, "properties": uses})
    tree = {"$defs": {"n": {"properties": {"kids": {"items": {"$ref": "#/$defs/n"}},
                                           "twin": {"$ref": "#/$defs/n"}}}},
            "$ref": "#/$defs/n"}  # fmt: skip
    check_contract(tree)


def test_repeat_counts_in_sequence_add_up() -> None:
    error = refused(string_with("^a{1000}b{1000}c{1000}d{1000}$"))
    assert (error.rule, error.pointer) == ("pattern", "/properties/code/pattern")
    assert f"4000 states, more than {MAX_PATTERN_STATES}" in str(error)


@pytest.mark.parametrize(
    ("pattern", "states"),
    [
        ("^a{500}b{501}$", 1001),
        ("^(a{600}|b{600})$", 1200),  # alternatives add
        ("(x{10}y{10}){50}z", 1001),  # nested repeats multiply the sum of their body...
        ("^[a-z]{1,400}-[0-9]{1,600}$", 1001),  # ... and a range counts its maximum
    ],
)
def test_pattern_states_over_the_bound_are_refused(pattern: str, states: int) -> None:
    error = refused(string_with(pattern))
    assert error.rule == "pattern"
    assert f"{states} states" in str(error)


@pytest.mark.parametrize(
    "pattern",
    [
        "^a{250}b{250}c{250}d{250}$",
        "^(a{500}|b{500})$",
        "(x{10}y{10}){50}",
        "^a{999}$",
        "(a{999})*",
        r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    ],
)
def test_pattern_states_within_the_bound_are_accepted(pattern: str) -> None:
    check_contract(string_with(pattern))


@pytest.mark.parametrize(
    "pattern",
    [
        "^" + "a*" * 40 + "$",
        "^a*a*a*a*$",
        "a*a*a*",  # re.search tries it at every position: one more
        "^.*a.*b.*c.*$",
        "^" + ".{0,100}" * 5 + "$",  # bounded but variable: 60 s on 300 characters
        "^(a{0,9}){0,10}$",
        r"^[^@\s]+[^@\s]+[^@\s]+[^@\s]+$",
        "^a*(?:b|a*)a*a*$",  # of alternatives, the costliest counts
    ],
)
def test_repeats_that_compete_for_the_same_characters_are_refused(pattern: str) -> None:
    error = refused(string_with(pattern))
    assert (error.rule, error.pointer) == ("pattern", "/properties/code/pattern")
    assert f"more than {MAX_REPEAT_OVERLAPS}" in str(error)
    assert "compete for the same characters" in str(error)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        r"[^@\s]+@[^@\s]+\.[^@\s]+",
        "^.*foo.*bar.*$",
        "^a*a*a*$",
        "^/[a-z]+/[a-z]+/[a-z]+/[a-z]+/[a-z]+/[a-z]+$",  # a separator forces each split
        r"^[0-9]+(\.[0-9]+)?(m|k|M|G|Ki|Mi|Gi)?$",
        r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
        r"^\+?[1-9]\d{1,14}$",
        r"^[A-Za-z_][A-Za-z0-9_]*$",
    ],
)
def test_ordinary_patterns_with_several_repeats_are_accepted(pattern: str) -> None:
    check_contract(string_with(pattern))


def test_competing_repeats_in_a_key_of_pattern_properties_are_refused() -> None:
    key = "^" + "a*" * 8 + "$"
    error = refused({"type": "object", "patternProperties": {key: {"type": "string"}}})
    assert (error.rule, error.pointer) == ("pattern", f"/patternProperties/{key}")


def test_the_patterns_of_a_schema_add_up() -> None:
    def fields(count: int) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {f"p{i}": {"type": "string", "pattern": "a{1000}"} for i in range(count)},
        }

    check_contract(fields(MAX_SCHEMA_PATTERN_STATES // 1000))
    error = refused(fields(MAX_SCHEMA_PATTERN_STATES // 1000 + 1))
    assert (error.rule, error.out_of_range) == ("cost", True)
    assert error.pointer.startswith("/properties/p") and error.pointer.endswith("/pattern")
    assert f"more than {MAX_SCHEMA_PATTERN_STATES} for the whole schema" in str(error)
