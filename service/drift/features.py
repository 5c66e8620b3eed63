"""What drift monitoring watches on a route, as plain values (the store turns them into SQL).

Only what goes into the model and what comes out of it: a change there means the traffic or
the model changed. Every route: prompt and completion tokens (successful requests). A route
with an output contract adds confidence and the escalation share, with a schema the
schema-valid share and each binned top-level field of the answers
(``service.guard.output_fields``), and with a review policy that escalates, the reviewers'
decisions.

Latency, time to first token, error classes and answers cut by a limit move with load, hardware
and the engine's batch, not with what the model learned: they are the route's service health
(``service.drift.slo``), judged against targets, never drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from service.drift.statistics import Kind
from service.guard.output_fields import FieldKind, output_field_kinds
from service.guard.policy import Escalate

FIELD_PREFIX = "answer."


class Source(StrEnum):
    NUMBER_COLUMN = "number_column"  # a number column of successful requests
    SCHEMA_VALID = "schema_valid"
    ESCALATED = "escalated"
    ANSWER_FIELD = "answer_field"  # a value kept in the record's `fields`
    REVIEW = "review"  # decided review items of the version


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    kind: Kind
    source: Source
    key: str = ""  # the column (number columns) or the answer field's name


BASE = (
    Feature("prompt_tokens", Kind.NUMBER, Source.NUMBER_COLUMN, "tokens_in"),
    Feature("completion_tokens", Kind.NUMBER, Source.NUMBER_COLUMN, "tokens_out"),
)
CONFIDENCE = Feature("confidence", Kind.NUMBER, Source.NUMBER_COLUMN, "confidence")
ESCALATED = Feature("escalated", Kind.CATEGORY, Source.ESCALATED)
SCHEMA_VALID = Feature("schema_valid", Kind.CATEGORY, Source.SCHEMA_VALID)
REVIEW = Feature("review_outcome", Kind.CATEGORY, Source.REVIEW)


def answer_feature(name: str, kind: FieldKind) -> Feature:
    return Feature(
        FIELD_PREFIX + name,
        Kind.NUMBER if kind is FieldKind.NUMBER else Kind.CATEGORY,
        Source.ANSWER_FIELD,
        name,
    )


def features_for(
    schema: Mapping[str, Any] | None, policy: Mapping[str, Any] | None
) -> tuple[Feature, ...]:
    """The features of a route with this output schema and review policy (either may be None)."""
    found = list(BASE)
    if schema is None and policy is None:
        return tuple(found)
    found += [CONFIDENCE, ESCALATED]
    if schema is not None:
        found.append(SCHEMA_VALID)
        found += [answer_feature(n, k) for n, k in output_field_kinds(schema).items()]
    if (policy or {}).get("escalate", Escalate.BELOW.value) != Escalate.NEVER.value:
        found.append(REVIEW)
    return tuple(found)
