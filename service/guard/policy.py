"""A route's review policy, and which answers it sends to a person. Pure."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.guard.tiers import DEFAULT_RISK, Risk

# A JSON pointer to a field of the answer, e.g. `/category` or `/items/0/name`.
Pointer = Annotated[str, StringConstraints(pattern=r"^(/([^/~]|~[01])*)+$", max_length=300)]


class Escalate(StrEnum):
    NEVER = "never"
    SAMPLE = "sample"
    BELOW = "below"
    ALWAYS = "always"


QA_SAMPLE = "qa_sample"


class ReviewPolicy(BaseModel):
    """Built from the route's risk tier's defaults and its own ``review`` block
    (``service.guard.tiers``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    risk: Risk = Field(
        default=DEFAULT_RISK, description="The route's risk tier (declared on the route)."
    )

    escalate: Escalate = Field(
        default=Escalate.BELOW,
        description="`never`, a `sample` of answers, answers `below` the threshold, or `always`.",
    )
    threshold: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.5, description="`below`: answers whose confidence is under this go to review."
    )
    sample_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0, description="`sample`: the share of answers sent to review."
    )
    invalid: Literal["escalate", "refuse"] = Field(
        default="escalate",
        description="An answer that breaks the schema (after the retry): flagged for review, "
        "or refused with 422.",
    )
    retry_invalid: Annotated[int, Field(ge=0, le=1)] = Field(
        default=1, description="Ask the engine again this many times when an answer is invalid."
    )
    truncated: Literal["retry", "invalid"] = Field(
        default="retry",
        description="An answer cut by max_tokens (finish_reason `length`) under a JSON schema, "
        "a JSON mode or tools: `retry` asks the engine again once with twice the token budget "
        "(up to the route's cap) before `invalid` applies; `invalid`: treated like any "
        "invalid answer at once.",
    )
    max_choices: Annotated[int, Field(ge=1, le=16)] | None = Field(
        default=None,
        description="The most choices (`n`) a request may ask for on this route; default "
        "LORAGATE_MAX_CHOICES. Every choice is validated and scored.",
    )
    delivery: Literal["flag", "hold"] = Field(
        default="flag",
        description="`flag`: the client gets an escalated answer at once, marked with its review "
        "id; `hold`: the client gets 202 and the review id, and reads the decision later.",
    )
    confidence_fields: (
        Annotated[tuple[Pointer, ...], Field(min_length=1, max_length=100)] | None
    ) = Field(
        default=None,
        description="JSON pointers of the fields the answer's confidence is the lowest of "
        "(an array index stands for every item, a pointer to an object or array for every "
        "field under it); by default the schema's categorical fields. Needs an output schema.",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2000,
        description="`hold`: the decision is also posted here; it must start with one of "
        "LORAGATE_REVIEW_CALLBACK_ALLOWLIST.",
    )
    qa_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="The share of answers nobody escalated that still go to review (reason "
        "`qa_sample`, low priority, never held), drawn from the request id.",
    )
    agreement_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="The share of review items given to two reviewers independently; they "
        "must agree, else an adjudicator decides. 1 on a critical route.",
    )

    @model_validator(mode="after")
    def _critical_needs_two(self) -> ReviewPolicy:
        if self.risk is Risk.CRITICAL and self.agreement_rate < 1.0:
            raise ValueError(
                "a critical route has every item decided by two reviewers: "
                "'agreement_rate' must stay 1"
            )
        return self


def qa_sampled(policy: ReviewPolicy, draw: float) -> bool:
    """Whether an answer nobody escalated goes to review as a QA sample."""
    return draw < policy.qa_rate


def reviewers_needed(policy: ReviewPolicy, draw: float) -> int:
    """How many reviewers decide the item independently: 2 for an agreement sample."""
    return 2 if draw < policy.agreement_rate else 1


def escalation_reason(
    policy: ReviewPolicy, valid: bool, confidence: float | None, draw: float
) -> str | None:
    """Why the answer goes to review (``draw`` is uniform in [0, 1)), or None."""
    if not valid:
        return "invalid"
    if policy.escalate is Escalate.ALWAYS:
        return "always"
    if policy.escalate is Escalate.BELOW and (confidence is None or confidence < policy.threshold):
        return "low_confidence"
    if policy.escalate is Escalate.SAMPLE and draw < policy.sample_rate:
        return "sample"
    return None
