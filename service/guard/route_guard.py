"""A route's output contract at work: the schema sent to vLLM, every answer judged.

A route with only a review policy gets the same, minus the schema: its answers are scored by
their length-normalised sequence probability.

For a route with an output schema the gateway asks vLLM for ``response_format`` ``json_schema``
and for token logprobs (stripped again when the client did not ask), validates the answer with
jsonschema (``finish_reason`` ``length`` is invalid), scores its confidence from the value tokens
of the fields that count (``guard.fields``: the categorical ones unless the route says which),
and decides with the route's review policy whether a person must look at it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.errors import InvalidRequest
from service.guard import (
    Confidence,
    ConfidenceFields,
    ContractValidator,
    SchemaRefused,
    Validation,
    score_free,
    score_json,
)
from service.guard.answers import answer_text, first_choice, first_finish_reason
from service.guard.output_fields import FieldKind, FieldValue, field_values, output_field_kinds
from service.guard.policy import (
    QA_SAMPLE,
    ReviewPolicy,
    escalation_reason,
    qa_sampled,
    reviewers_needed,
)
from service.guard.sampling import Purpose
from service.guard.sampling import draw as draw_of
from service.guard.tiers import DEFAULT_RISK, Risk, tier_policy

METADATA = "loragate"


@dataclass(frozen=True, slots=True)
class RouteContract:
    """A route's output schema (optional) and review policy: with a policy alone, answers are
    scored by their sequence probability and reviewed, but not constrained or validated."""

    schema: Mapping[str, Any] | None
    validator: ContractValidator | None
    policy: ReviewPolicy
    fields: ConfidenceFields | None = None  # which fields the score is taken from (with a schema)
    # The top-level fields whose values records keep for drift monitoring (guard.output_fields).
    binned: Mapping[str, FieldKind] = field(default_factory=dict)

    @classmethod
    def build(
        cls, schema: Mapping[str, Any] | None, policy: Mapping[str, Any] | None,
        risk: Risk | str = DEFAULT_RISK,
    ) -> RouteContract:  # fmt: skip
        """Checked when routes are loaded: a bad schema or policy never reaches a request.

        The policy is the risk tier's defaults overridden by the route's own ``policy``."""
        review = ReviewPolicy.model_validate(tier_policy(risk, policy))
        if schema is None:
            if review.confidence_fields is not None:
                raise SchemaRefused(
                    "confidence-fields", "", "'confidence_fields' needs an output schema"
                )
            return cls(None, None, review)
        validator = ContractValidator(dict(schema))
        return cls(
            schema, validator, review, ConfidenceFields(schema, review.confidence_fields),
            output_field_kinds(schema),
        )  # fmt: skip

    def forced_fields(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """What the gateway adds to the engine's body; the client may not set the format."""
        forced: dict[str, Any] = {}
        if self.schema is not None:
            if "response_format" in payload:
                raise InvalidRequest(
                    "This route has an output contract: the gateway sets 'response_format'.",
                    param="response_format",
                )
            forced["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": self.schema, "strict": True},
            }
        if not payload.get("logprobs"):  # asked for the score; stripped from the answer again
            forced["logprobs"] = True
            forced["top_logprobs"] = 1
        return forced


@dataclass(frozen=True, slots=True)
class Judgement:
    validation: Validation | None  # None: the route has no schema to check against
    confidence: Confidence | None
    review_reason: str | None
    # The answer's values of the contract's binned fields, for its record (drift monitoring).
    fields: dict[str, FieldValue] | None = None
    reviewers: int = 1  # how many reviewers decide its review item independently

    @property
    def escalated(self) -> bool:
        """Sent to review by the policy; a QA sample is reviewed but not escalated."""
        return self.review_reason is not None and self.review_reason != QA_SAMPLE

    @property
    def valid(self) -> bool | None:
        return self.validation.valid if self.validation is not None else None

    @property
    def errors(self) -> tuple[str, ...]:
        return self.validation.errors if self.validation is not None else ()

    @property
    def score(self) -> float | None:
        return self.confidence.score if self.confidence is not None else None


def judge(
    answer: Mapping[str, Any], contract: RouteContract, draw: float | None = None,
    *, request_id: str | None = None,
) -> Judgement:  # fmt: skip
    """Validate, score and decide on review. With ``request_id`` the samples (``escalate:
    sample``, QA, agreement) are drawn from it, so the same request is sampled the same way;
    without, only ``draw`` (else a random number) decides ``escalate: sample``, and nothing is
    QA-sampled (shadow answers)."""
    choice = first_choice(answer)
    text = answer_text(answer, chat=True)
    finish = first_finish_reason(answer)
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    validation = None
    if contract.validator is not None:
        validation = contract.validator.validate(text if isinstance(text, str) else "", finish)
    if validation is not None and validation.valid and isinstance(text, str):
        counts = contract.fields.counts if contract.fields is not None else None
        confidence = score_json(text, tokens, counts)
    else:
        confidence = score_free(tokens)
    score = confidence.score if confidence is not None else None
    policy = contract.policy
    if draw is not None:
        roll = draw
    elif request_id is not None:
        roll = draw_of(request_id, Purpose.SAMPLE)
    else:
        roll = random.random()
    valid = validation is None or validation.valid
    reason = escalation_reason(policy, valid, score, roll)
    if reason is None and request_id and qa_sampled(policy, draw_of(request_id, Purpose.QA)):
        reason = QA_SAMPLE
    reviewers = 1
    if reason is not None:
        pick = draw_of(request_id, Purpose.AGREEMENT) if request_id else random.random()
        reviewers = reviewers_needed(policy, pick)
    parsed = validation.value if validation is not None else None
    return Judgement(
        validation, confidence, reason, field_values(parsed, contract.binned), reviewers
    )


def present(
    answer: dict[str, Any], judgement: Judgement, *, keep_logprobs: bool, review_id: str | None
) -> bytes:
    """The client's body: the engine's answer plus the documented ``loragate`` metadata."""
    if not keep_logprobs:
        for choice in answer.get("choices") or []:
            if isinstance(choice, dict):
                choice["logprobs"] = None
    answer[METADATA] = verdict_metadata(judgement, review_id)
    return orjson.dumps(answer)


def verdict_metadata(judgement: Judgement, review_id: str | None) -> dict[str, Any]:
    """The documented ``loragate`` verdict of an answer (non-streamed body, or a stream's last
    event)."""
    confidence = judgement.confidence
    return {
        "schema_valid": judgement.valid,
        "schema_errors": list(judgement.errors),
        "confidence": confidence.score if confidence is not None else None,
        "field_confidence": dict(confidence.fields) if confidence is not None else {},
        "confidence_fields": list(confidence.counted) if confidence is not None else [],
        "review_id": review_id,
    }
