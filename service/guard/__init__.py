"""Output guards, pure functions: output contracts (JSON Schema) and confidence from logprobs."""

from service.guard.confidence import Confidence, Leaf, leaf_spans, score_free, score_json
from service.guard.fields import CATEGORICAL_MAX_LENGTH, ConfidenceFields
from service.guard.refused import SchemaRefused
from service.guard.schema import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_COST,
    MAX_SCHEMA_DEPTH,
    ContractValidator,
    Refusal,
    Validation,
    check_bounds,
    check_contract,
    refusal,
)

__all__ = [
    "CATEGORICAL_MAX_LENGTH",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_COST",
    "MAX_SCHEMA_DEPTH",
    "Confidence",
    "ConfidenceFields",
    "ContractValidator",
    "Leaf",
    "Refusal",
    "SchemaRefused",
    "Validation",
    "check_bounds",
    "check_contract",
    "leaf_spans",
    "refusal",
    "score_free",
    "score_json",
]
