"""The reviewer API's request and response bodies (``service.review.api``), and how each is
made from the review queue's values."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, JsonValue

from service.guard.tiers import Risk
from service.review.agreement import Agreement
from service.review.calibration_schemas import VersionCalibrationOut
from service.review.errors import ReviewDecisionInvalid
from service.review.model import (
    MAX_INT,
    ClaimedItem,
    Decision,
    DecisionKind,
    HistoryEntry,
    ItemState,
    Outcome,
    QueueStats,
    ReviewItemView,
    Vote,
)
from service.review.quality import PairAgreement, QaEstimate
from service.review.service import Figures, ItemDetail
from service.review.sla import SlaTargets

DEFAULT_LEASE_S = 300.0
MIN_LEASE_S = 10.0
MAX_LEASE_S = 3600.0


class ItemOut(BaseModel):
    id: str = Field(description="The review item's id.")
    request_id: str = Field(description="The request whose answer is under review.")
    route: str = Field(description="The route the request used.")
    target: str = Field(description="The model or adapter version `name@N` that answered.")
    reason: str = Field(description="Why the answer needs a person (e.g. `low_confidence`).")
    priority: int = Field(description="Higher is handed out first.")
    state: ItemState = Field(
        description="pending, claimed, approved, corrected, rejected or parked."
    )
    created_at: datetime = Field(description="When the item was queued.")
    claimed_by: str | None = Field(description="Key id of the reviewer holding the claim.")
    lease_until: datetime | None = Field(
        description="When the current claim runs out, unless renewed by a heartbeat."
    )
    claim_token: int = Field(
        description="The fencing token of the latest claim (0: never claimed)."
    )
    expiries: int = Field(description="How many claims on this item ran out unfinished.")
    answer: str = Field(description="The model's answer as it was returned.")
    request_body: str | None = Field(
        description="The request as sent (absent when bodies are redacted)."
    )
    confidence: float | None = Field(description="The answer's overall confidence, if judged.")
    field_confidence: dict[str, float] | None = Field(
        description="Per JSON field of the answer: its confidence, if judged."
    )
    schema_errors: list[Any] | None = Field(
        description="Where the answer broke the route's output schema, if it did."
    )
    decided_at: datetime | None = Field(description="When the item was decided.")
    decided_by: str | None = Field(description="Key id of the reviewer who decided it.")
    corrected_answer: str | None = Field(description="The reviewer's answer (`corrected`).")
    reject_reason: str | None = Field(description="Why the answer was rejected (`rejected`).")
    risk: Risk = Field(description="The route's risk tier when the item was queued.")
    reviews_needed: int = Field(
        description="1, or 2 when two reviewers decide it independently and must agree."
    )
    votes: int = Field(description="Independent decisions recorded so far (of reviews_needed).")
    overdue: bool = Field(description="Open and older than its tier's target age (SLA).")

    @classmethod
    def of(cls, item: ReviewItemView, sla: SlaTargets, now: datetime) -> ItemOut:
        return cls(
            id=item.id, request_id=item.request_id, route=item.route, target=item.target,
            reason=item.reason, priority=item.priority, state=item.state,
            created_at=item.created_at, claimed_by=item.claimed_by,
            lease_until=item.lease_until, claim_token=item.claim_token, expiries=item.expiries,
            answer=item.answer, request_body=item.request_body, confidence=item.confidence,
            field_confidence=_opt_dict(item.field_confidence),
            schema_errors=list(item.schema_errors) if item.schema_errors is not None else None,
            decided_at=item.decided_at, decided_by=item.decided_by,
            corrected_answer=item.corrected_answer, reject_reason=item.reject_reason,
            risk=Risk(item.risk), reviews_needed=item.reviews_needed, votes=item.votes,
            overdue=sla.is_late(item, now),
        )  # fmt: skip


def _opt_dict(value: Mapping[str, float] | None) -> dict[str, float] | None:
    return dict(value) if value is not None else None


class HistoryOut(BaseModel):
    at: datetime = Field(description="When it happened.")
    reviewer: str = Field(description="Key id of the reviewer concerned.")
    kind: str = Field(description="approve, correct, reject, expired or parked.")
    claim_token: int = Field(description="The claim's fencing token at the time.")
    payload: dict[str, Any] = Field(
        description="The corrected answer or reject reason; for expiries, the lease end."
    )

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryOut:
        return cls(
            at=entry.at, reviewer=entry.reviewer, kind=entry.kind,
            claim_token=entry.claim_token, payload=dict(entry.payload),
        )  # fmt: skip


class VoteOut(BaseModel):
    seq: int = Field(description="1 or 2: the order the independent decisions came in.")
    reviewer: str = Field(description="Key id of the reviewer.")
    kind: DecisionKind = Field(description="approve, correct or reject.")
    at: datetime = Field(description="When it was recorded.")
    corrected_answer: str | None = Field(description="The reviewer's answer (`correct`).")
    reject_reason: str | None = Field(description="Why (`reject`).")

    @classmethod
    def of(cls, vote: Vote) -> VoteOut:
        return cls(
            seq=vote.seq, reviewer=vote.reviewer, kind=vote.kind, at=vote.at,
            corrected_answer=vote.corrected_answer, reject_reason=vote.reject_reason,
        )  # fmt: skip


class ItemDetailOut(ItemOut):
    history: list[HistoryOut] = Field(description="The item's audit trail, oldest first.")
    reviews: list[VoteOut] = Field(
        description="The two reviewers' independent decisions, once both are in (for the "
        "adjudicator of a disputed item, and after the decision); empty before, so a reviewer "
        "never sees the other's decision first."
    )

    @classmethod
    def of_detail(cls, detail: ItemDetail, sla: SlaTargets, now: datetime) -> ItemDetailOut:
        return cls(
            **ItemOut.of(detail.item, sla, now).model_dump(),
            history=[HistoryOut.of(entry) for entry in detail.history],
            reviews=[VoteOut.of(vote) for vote in detail.votes],
        )


class ClaimIn(BaseModel):
    route: str | None = Field(default=None, description="Only claim items of this route.")
    reason: str | None = Field(default=None, description="Only claim items queued for this.")
    tier: Risk | None = Field(default=None, description="Only claim items of this risk tier.")
    lease_s: float = Field(
        default=DEFAULT_LEASE_S, ge=MIN_LEASE_S, le=MAX_LEASE_S,
        description="How long the claim lasts without a heartbeat, in seconds.",
    )  # fmt: skip


class ClaimOut(BaseModel):
    item: ItemOut = Field(description="The claimed item.")
    token: int = Field(description="The fencing token: send it with heartbeats and decisions.")
    lease_until: datetime = Field(description="When the claim runs out without a heartbeat.")

    @classmethod
    def of(cls, claimed: ClaimedItem, sla: SlaTargets, now: datetime) -> ClaimOut:
        return cls(
            item=ItemOut.of(claimed.item, sla, now), token=claimed.token,
            lease_until=claimed.lease_until,
        )  # fmt: skip


class HeartbeatIn(BaseModel):
    token: int = Field(ge=0, le=MAX_INT, description="The fencing token the claim returned.")
    lease_s: float = Field(
        default=DEFAULT_LEASE_S, ge=MIN_LEASE_S, le=MAX_LEASE_S,
        description="The lease is extended to now plus this many seconds.",
    )  # fmt: skip


class HeartbeatOut(BaseModel):
    item_id: str = Field(description="The review item's id.")
    token: int = Field(description="The claim's fencing token (unchanged).")
    lease_until: datetime = Field(description="The new end of the lease.")


class DecisionIn(BaseModel):
    token: int = Field(ge=0, le=MAX_INT, description="The fencing token the claim returned.")
    kind: Literal["approve", "correct", "reject"] = Field(
        description="`approve` the answer, `correct` it, or `reject` it."
    )
    corrected_answer: JsonValue = Field(
        default=None,
        description="For `correct` only, and required there: the answer, as a JSON value "
        "(object, array, number...) or as text. Text is read as JSON on a route with an output "
        "schema and taken as it is on a route reviewed without one.",
    )
    reason: str | None = Field(
        default=None, description="For `reject` only, and required there: why."
    )

    def payload(self) -> str | None:
        """The queue's payload for the decision; refuses fields the kind does not take."""
        if self.kind != "correct" and self.corrected_answer is not None:
            raise ReviewDecisionInvalid(
                f"A '{self.kind}' decision takes no corrected answer.", param="corrected_answer"
            )
        if self.kind != "reject" and self.reason is not None:
            raise ReviewDecisionInvalid(
                f"A '{self.kind}' decision takes no reason.", param="reason"
            )
        if self.kind == "correct":
            return corrected_text(self.corrected_answer)
        if self.kind == "reject":
            return self.reason
        return None


class DecisionOut(BaseModel):
    item_id: str = Field(description="The review item's id.")
    kind: DecisionKind = Field(description="approve, correct or reject.")
    reviewer: str = Field(description="Key id of the reviewer who decided.")
    token: int = Field(description="The fencing token the decision was made under.")
    at: datetime = Field(description="When the decision was recorded.")
    corrected_answer: str | None = Field(description="The reviewer's answer (`correct`).")
    reject_reason: str | None = Field(description="Why the answer was rejected (`reject`).")
    outcome: Outcome = Field(
        description="`decided`: the item's decision; `voted`: the first of two independent "
        "decisions (the item waits for another reviewer); `disputed`: the second reviewer "
        "disagreed with the first, and an adjudicator (lead or admin) decides."
    )

    @classmethod
    def of(cls, decision: Decision) -> DecisionOut:
        return cls(
            item_id=decision.item_id, kind=decision.kind, reviewer=decision.reviewer,
            token=decision.token, at=decision.at, corrected_answer=decision.corrected_answer,
            reject_reason=decision.reject_reason, outcome=decision.outcome,
        )  # fmt: skip


class QaOut(BaseModel):
    sampled: int = Field(description="Answers nobody escalated that were queued as QA samples.")
    decided: int = Field(description="Of those, decided by a reviewer.")
    changed: int = Field(description="Of the decided ones, corrected or rejected.")
    changed_share: float | None = Field(
        description="changed / decided: how often an unescalated answer would have been "
        "changed (null before any decision)."
    )
    low: float | None = Field(description="Lower bound of its 95 % Wilson interval.")
    high: float | None = Field(description="Upper bound of its 95 % Wilson interval.")

    @classmethod
    def of(cls, qa: QaEstimate) -> QaOut:
        share = qa.changed
        return cls(
            sampled=qa.sampled, decided=share.n, changed=share.hits,
            changed_share=share.estimate, low=share.low, high=share.high,
        )  # fmt: skip


class AgreementOut(BaseModel):
    items: int = Field(description="Items decided by two reviewers independently.")
    observed: float | None = Field(description="The share of items both decided alike.")
    kappa: float | None = Field(
        description="Cohen's kappa on approve/correct/reject (null when undefined: no items, "
        "or both reviewers always chose the same kind)."
    )
    corrections: int = Field(description="Items both reviewers corrected.")
    field_agreement: float | None = Field(
        description="Of those: the share of top-level fields both set to the same value."
    )

    @classmethod
    def of(cls, figures: Agreement) -> AgreementOut:
        return cls(
            items=figures.items, observed=figures.observed, kappa=figures.kappa,
            corrections=figures.corrections, field_agreement=figures.field_agreement,
        )  # fmt: skip


class PairOut(AgreementOut):
    reviewers: list[str] = Field(description="The two reviewers' key ids.")

    @classmethod
    def of(cls, pair: PairAgreement) -> PairOut:  # type: ignore[override]
        return cls(reviewers=list(pair.reviewers), **AgreementOut.of(pair.agreement).model_dump())


class StatsOut(BaseModel):
    depth: dict[str, int] = Field(description="Per route: undecided items (pending or claimed).")
    claimed: dict[str, int] = Field(
        description="Per route: items held under a lease that has not run out."
    )
    oldest_pending_age_s: float | None = Field(
        description="Age in seconds of the oldest item nobody holds a live lease on."
    )
    parked: int = Field(description="Items set aside after too many leases ran out.")
    sla_target_s: dict[str, float] = Field(
        description="Per risk tier: the target age of an open item, in seconds."
    )
    overdue: dict[str, int] = Field(
        description="Per risk tier: open items older than their target age now."
    )
    qa: dict[str, QaOut] = Field(
        description="Per route: QA samples of unescalated answers and how often reviewers "
        "changed them."
    )
    agreement: dict[str, AgreementOut] = Field(
        description="Per route: agreement of two reviewers' independent decisions."
    )
    pairs: list[PairOut] = Field(description="The same agreement per pair of reviewers.")
    calibration: list[VersionCalibrationOut] = Field(
        description="Per route and adapter version: how well its confidence predicted "
        "reviewers' decisions on the items it sent to review (ECE, Brier score, reliability "
        "bins). Reviewed items are mostly the unsure ones a policy escalated: the figures "
        "describe the versions' confidence where reviewers looked."
    )

    @classmethod
    def of(cls, stats: QueueStats, sla: SlaTargets, measured: Figures) -> StatsOut:
        figures = measured.quality
        return cls(
            depth=dict(stats.depth), claimed=dict(stats.claimed),
            oldest_pending_age_s=stats.oldest_pending_age_s, parked=stats.parked,
            sla_target_s=sla.per_tier(), overdue=dict(measured.overdue),
            qa={route: QaOut.of(qa) for route, qa in figures.qa.items()},
            agreement={route: AgreementOut.of(a) for route, a in figures.agreement.items()},
            pairs=[PairOut.of(p) for p in figures.pairs],
            calibration=[VersionCalibrationOut.of(v) for v in measured.calibration],
        )  # fmt: skip


class UnparkOut(BaseModel):
    item_id: str = Field(description="The review item's id.")
    state: ItemState = Field(
        description="Its state now: `pending`, or `disputed` when two reviewers had already "
        "decided it differently (it waits for an adjudicator)."
    )


def corrected_text(value: JsonValue) -> str | None:
    """The corrected answer as the queue keeps it: text as sent, any other value as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
