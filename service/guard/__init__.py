"""Output guards, pure functions: output contracts (JSON Schema) and confidence from logprobs."""

from service.guard.confidence import Confidence, Leaf, leaf_spans, score_free, score_json
from service.guard.fields import CATEGORICAL_MAX_LENGTH, ConfidenceFields
from service.guard.schema import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    ContractValidator,
    SchemaRefused,
    Validation,
    check_contract,
)

__all__ = [
    "CATEGORICAL_MAX_LENGTH",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "Confidence",
    "ConfidenceFields",
    "ContractValidator",
    "Leaf",
    "SchemaRefused",
    "Validation",
    "check_contract",
    "leaf_spans",
    "score_free",
    "score_json",
]
