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
from dataclasses import dataclass, field, replace
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
from service.guard.output_fields import FieldKind, FieldValue, field_values, output_field_kinds
from service.guard.policy import (
    QA_SAMPLE,
    Escalate,
    ReviewPolicy,
    escalation_reason,
    qa_sampled,
    reviewers_needed,
)
from service.guard.sampling import Purpose
from service.guard.sampling import draw as draw_of
from service.guard.tiers import DEFAULT_RISK, Risk, tier_policy
from service.guard.tool_calls import TRUNCATED, calls_of, score_calls, validate_calls

METADATA = "loragate"
CLIENT_CHECKS = ReviewPolicy(escalate=Escalate.NEVER, invalid="refuse")


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
    # The request's tools by name, each call's arguments checked against its own schema (set
    # per request with ``with_tools``).
    tools: Mapping[str, ContractValidator] = field(default_factory=dict)
    # False for the checks a client asked for on a route without a review policy (a JSON mode,
    # tools): answers are judged and an invalid one is refused, but nothing goes to review.
    reviewed: bool = True

    @classmethod
    def client_checks(cls, validator: ContractValidator | None) -> RouteContract:
        """What a route without a contract enforces when the client asks for JSON or tools:
        the answer validated (against ``validator``, and each tool call against its tool),
        asked again once when invalid (with a larger budget when cut by max_tokens), then
        refused with 422; never reviewed."""
        return cls(None, validator, CLIENT_CHECKS, reviewed=False)

    def with_tools(self, tools: Mapping[str, ContractValidator]) -> RouteContract:
        return replace(self, tools=tools) if tools else self

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
class ChoiceVerdict:
    """One choice judged: its validation (None: nothing to check) and its confidence."""

    validation: Validation | None
    confidence: Confidence | None
    truncated: bool = False  # cut by max_tokens

    @property
    def valid(self) -> bool:
        return self.validation is None or self.validation.valid


@dataclass(frozen=True, slots=True)
class Judgement:
    """An answer judged: ``validation`` and ``confidence`` are its worst choice's (the first
    invalid one, else the least confident), which the review policy decides on; ``choices``
    holds every choice's verdict (one for ``n`` = 1)."""

    validation: Validation | None  # None: the route has no schema to check against
    confidence: Confidence | None
    review_reason: str | None
    # The answer's values of the contract's binned fields, for its record (drift monitoring).
    fields: dict[str, FieldValue] | None = None
    reviewers: int = 1  # how many reviewers decide its review item independently
    choices: tuple[ChoiceVerdict, ...] = ()

    @property
    def truncated(self) -> bool:
        """A choice was cut by max_tokens."""
        return any(choice.truncated for choice in self.choices)

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
    choices = answer.get("choices")
    listed = [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    verdicts = tuple(judge_choice(choice, contract) for choice in listed or [{}])
    worst = _worst(verdicts)
    validation, confidence = worst.validation, worst.confidence
    score = confidence.score if confidence is not None else None
    policy = contract.policy
    if draw is not None:
        roll = draw
    elif request_id is not None:
        roll = draw_of(request_id, Purpose.SAMPLE)
    else:
        roll = random.random()
    valid = worst.valid
    reason = escalation_reason(policy, valid, score, roll)
    if reason is None and request_id and qa_sampled(policy, draw_of(request_id, Purpose.QA)):
        reason = QA_SAMPLE
    reviewers = 1
    if reason is not None:
        pick = draw_of(request_id, Purpose.AGREEMENT) if request_id else random.random()
        reviewers = reviewers_needed(policy, pick)
    first = verdicts[0].validation
    parsed = first.value if first is not None and not _has_calls(listed) else None
    return Judgement(
        validation, confidence, reason, field_values(parsed, contract.binned), reviewers,
        verdicts,
    )  # fmt: skip


def judge_choice(choice: Mapping[str, Any], contract: RouteContract) -> ChoiceVerdict:
    """One choice: its tool calls checked against their tools' schemas, else its text against
    the contract's schema; scored from its tokens."""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    calls = calls_of(message)
    truncated = finish == "length"
    if calls or (contract.tools and contract.validator is None):
        # A choice of a request with tools that wrote no call is judged as text (it may);
        # one that was cut before its call was parsed is invalid.
        if calls:
            return ChoiceVerdict(
                validate_calls(calls, contract.tools, finish), score_calls(tokens), truncated
            )
        if truncated:
            return ChoiceVerdict(Validation(False, None, (TRUNCATED,)), score_free(tokens), True)
        return ChoiceVerdict(None, score_free(tokens))
    validation = None
    if contract.validator is not None:
        validation = contract.validator.validate(text if isinstance(text, str) else "", finish)
    if validation is not None and validation.valid and isinstance(text, str):
        counts = contract.fields.counts if contract.fields is not None else None
        confidence = score_json(text, tokens, counts)
    else:
        confidence = score_free(tokens)
    return ChoiceVerdict(validation, confidence, truncated and validation is not None)


def _worst(verdicts: tuple[ChoiceVerdict, ...]) -> ChoiceVerdict:
    """The first invalid choice, else the least confident (one without a score first)."""
    for verdict in verdicts:
        if not verdict.valid:
            return verdict
    return min(verdicts, key=lambda v: -1.0 if v.confidence is None else v.confidence.score)


def _has_calls(choices: list[dict[str, Any]]) -> bool:
    return bool(choices) and bool(calls_of(choices[0].get("message")))


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
    metadata = {
        **_verdict(judgement.validation, judgement.confidence),
        "truncated": judgement.truncated,
        "review_id": review_id,
    }
    if len(judgement.choices) > 1:
        metadata["choices"] = [
            {"index": index, **_verdict(choice.validation, choice.confidence),
             "truncated": choice.truncated}
            for index, choice in enumerate(judgement.choices)
        ]  # fmt: skip
    return metadata


def _verdict(validation: Validation | None, confidence: Confidence | None) -> dict[str, Any]:
    return {
        "schema_valid": validation.valid if validation is not None else None,
        "schema_errors": list(validation.errors) if validation is not None else [],
        "confidence": confidence.score if confidence is not None else None,
        "field_confidence": dict(confidence.fields) if confidence is not None else {},
        "confidence_fields": list(confidence.counted) if confidence is not None else [],
    }
