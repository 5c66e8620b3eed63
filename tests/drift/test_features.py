"""What drift monitoring watches: which answer fields are binned, the values a record keeps,
the features of a route, and records spooled before the column existed. Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from service.drift.features import features_for
from service.drift.statistics import Kind
from service.guard.output_fields import (
    MAX_FIELDS,
    FieldKind,
    category_label,
    field_values,
    output_field_kinds,
)
from service.guard.route_guard import RouteContract, judge
from service.records.draft import decode
from tests.drift.traffic import TICKETS_SCHEMA

TICKETS = json.loads(TICKETS_SCHEMA.read_text())


def test_categories_and_numbers_are_told_apart_by_the_schema() -> None:
    assert output_field_kinds(TICKETS) == {
        "category": FieldKind.CATEGORY,  # enum
        "urgency": FieldKind.CATEGORY,  # an integer from 1 to 3
    }  # next_action: free text (maxLength 120)
    schema = {
        "$defs": {"level": {"type": "string", "enum": ["low", "high"]}},
        "type": "object",
        "properties": {
            "level": {"$ref": "#/$defs/level"},
            "flag": {"type": "boolean"},
            "code": {"type": "string", "maxLength": 8},
            "score": {"type": "number"},
            "count": {"type": "integer", "minimum": 0},
            "wide": {"type": "integer", "minimum": 0, "maximum": 1000},
            "const": {"const": "x"},
            "both": {"allOf": [{"type": "string"}, {"maxLength": 4}]},
            "items": {"type": "array"},
            "text": {"type": "string"},
            "odd name!": {"type": "boolean"},  # not a plain name: never in a query or a label
        },
    }
    assert output_field_kinds(schema) == {
        "level": FieldKind.CATEGORY, "flag": FieldKind.CATEGORY, "code": FieldKind.CATEGORY,
        "score": FieldKind.NUMBER, "count": FieldKind.NUMBER, "wide": FieldKind.NUMBER,
        "const": FieldKind.CATEGORY, "both": FieldKind.CATEGORY,
    }  # fmt: skip
    many = {"type": "object", "properties": {f"f{i}": {"type": "boolean"} for i in range(40)}}
    assert len(output_field_kinds(many)) == MAX_FIELDS
    assert output_field_kinds(None) == {} and output_field_kinds({"type": "string"}) == {}


def test_a_record_keeps_categories_as_labels_and_numbers_as_numbers() -> None:
    kinds = {"category": FieldKind.CATEGORY, "urgency": FieldKind.CATEGORY,
             "score": FieldKind.NUMBER}  # fmt: skip
    answer = {"category": "billing", "urgency": 2, "score": 0.5, "next_action": "Refund"}
    assert field_values(answer, kinds) == {"category": "billing", "urgency": "2", "score": 0.5}
    assert field_values({"score": "high", "urgency": True}, kinds) == {"urgency": "true"}
    assert field_values({"score": float("nan")}, kinds) is None
    assert field_values(["not", "an", "object"], kinds) is None
    assert [category_label(v) for v in (None, False, 2.0, 2.5, "x" * 100, [1])] == [
        "null", "false", "2", "2.5", "x" * 64, None,
    ]  # fmt: skip


def test_the_guard_hands_the_values_to_the_record() -> None:
    contract = RouteContract.build(TICKETS, None)
    text = '{"category": "billing", "urgency": 3, "next_action": "Refund the charge"}'
    answer = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}
    assert judge(answer, contract).fields == {"category": "billing", "urgency": "3"}
    broken = {"choices": [{"message": {"content": "{not json"}, "finish_reason": "stop"}]}
    assert judge(broken, contract).fields is None
    policy_only = RouteContract.build(None, {"escalate": "never"})
    assert judge(answer, policy_only).fields is None


def test_a_routes_features_follow_its_contract() -> None:
    plain = [f.name for f in features_for(None, None)]
    # What goes in and comes out of the model only: latency, time to first token, errors and
    # finish reasons are service health (service.drift.slo), never drift.
    assert plain == ["prompt_tokens", "completion_tokens"]
    contract = {f.name: f.kind for f in features_for(TICKETS, None)}
    assert contract["answer.category"] is Kind.CATEGORY and "review_outcome" in contract
    assert "schema_valid" in contract and contract["confidence"] is Kind.NUMBER
    never = [f.name for f in features_for(None, {"escalate": "never"})]
    assert "review_outcome" not in never and "schema_valid" not in never and "escalated" in never


def test_a_record_spooled_before_the_column_existed_still_ships() -> None:
    row = {"id": "r1", "created_at": datetime(2026, 12, 1, tzinfo=UTC).isoformat()}
    record = decode(orjson.dumps({"row": row, "review": None}))
    assert record.row["fields"] is None
