"""The reviewer API over the review queue: list and inspect items, claim one under a lease,
keep the lease alive, and decide (approve, correct or reject).

A claim hands out a fencing token; heartbeats and decisions must carry it, so a reviewer whose
lease ran out (and whose item someone else claimed since) gets 409 instead of overwriting the
newer claimant's work. The reviewer recorded is the caller's key id. Deciding is the
operation the web UI shares (``service.review.decisions``); this module only translates HTTP.

The time every operation uses comes from the ``review_clock`` dependency (tests override it
through ``app.dependency_overrides`` to move leases tick by tick).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, JsonValue

from service import clock
from service.api.deps import gateway, require_roles
from service.audit.actor import api_actor
from service.auth import Principal, Role
from service.errors import ReviewDecisionInvalid
from service.review import decisions, parking, queue
from service.review.agreement import Agreement
from service.review.decisions import DecisionOrder, item_not_found
from service.review.quality import PairAgreement, QaEstimate, Quality, quality
from service.review.queue import (
    MAX_INT,
    ClaimedItem,
    Decision,
    DecisionKind,
    HistoryEntry,
    ItemNotFound,
    ItemState,
    Outcome,
    QueueStats,
    ReviewItemView,
    Vote,
)
from service.review.sla import SlaTargets, overdue_counts, sla_targets
from service.review.tiers import Risk
from service.review.visibility import adjudicates, may_see, scope_of, shown_votes

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
REVIEW_ROLES = (Role.REVIEWER, Role.LEAD, Role.ADMIN)
ReviewerKey = Annotated[Principal, Depends(require_roles(*REVIEW_ROLES))]
UnparkKey = Annotated[Principal, Depends(require_roles(*parking.UNPARK_ROLES))]

DEFAULT_LEASE_S = 300.0
MIN_LEASE_S = 10.0
MAX_LEASE_S = 3600.0


def review_clock() -> datetime:
    """The current time for queue operations (a dependency, so tests can replace it)."""
    return clock.now()


Now = Annotated[datetime, Depends(review_clock)]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is not reviewer, lead or admin."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No review item has this id."},
}
STALE: dict[int | str, dict[str, Any]] = {
    409: {"description": "The claim token is not the item's current one, or its lease ran out."},
}


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
            overdue=item.state.value in OPEN_STATES
            and sla.is_overdue(item.risk, item.created_at, now),
        )  # fmt: skip


OPEN_STATES = frozenset({"pending", "claimed", "disputed"})


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

    @classmethod
    def of(
        cls, stats: QueueStats, sla: SlaTargets, overdue: Mapping[str, int], figures: Quality
    ) -> StatsOut:
        return cls(
            depth=dict(stats.depth), claimed=dict(stats.claimed),
            oldest_pending_age_s=stats.oldest_pending_age_s, parked=stats.parked,
            sla_target_s=sla.per_tier(), overdue=dict(overdue),
            qa={route: QaOut.of(qa) for route, qa in figures.qa.items()},
            agreement={route: AgreementOut.of(a) for route, a in figures.agreement.items()},
            pairs=[PairOut.of(p) for p in figures.pairs],
        )  # fmt: skip


def reviewer_of(principal: Principal) -> str:
    return principal.key_id


def corrected_text(value: JsonValue) -> str | None:
    """The corrected answer as the queue keeps it: text as sent, any other value as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _payload(body: DecisionIn) -> str | None:
    """The queue's payload for the decision; refuses fields the kind does not take."""
    if body.kind != "correct" and body.corrected_answer is not None:
        raise ReviewDecisionInvalid(
            f"A '{body.kind}' decision takes no corrected answer.", param="corrected_answer"
        )
    if body.kind != "reject" and body.reason is not None:
        raise ReviewDecisionInvalid(f"A '{body.kind}' decision takes no reason.", param="reason")
    if body.kind == "correct":
        return corrected_text(body.corrected_answer)
    if body.kind == "reject":
        return body.reason
    return None


def sla_of(request: Request) -> SlaTargets:
    return sla_targets(gateway(request).settings)


@router.get(
    "/items",
    summary="List review items",
    description=(
        "Items in queue order: those past their risk tier's target age (SLA) first, then the "
        "highest priority, then the oldest. A key limited to routes or tiers lists only those."
    ),
    response_model=list[ItemOut],
    responses={**AUTH_ERRORS, 400: {"description": "An unknown state or tier, or a bad bound."}},
)
async def list_items(
    request: Request,
    principal: ReviewerKey,
    now: Now,
    state: Annotated[ItemState | None, Query(description="Only items in this state.")] = None,
    route: Annotated[str | None, Query(description="Only items of this route.")] = None,
    reason: Annotated[str | None, Query(description="Only items queued for this.")] = None,
    tier: Annotated[Risk | None, Query(description="Only items of this risk tier.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many items.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Skip this many items first.")] = 0,
) -> list[ItemOut]:
    sla = sla_of(request)
    async with gateway(request).sessions() as session:
        items = await queue.list_items(
            session, state=state, route=route, reason=reason, limit=limit, offset=offset,
            scope=scope_of(principal, tier=tier), sla=sla, now=now,
        )  # fmt: skip
    return [ItemOut.of(item, sla, now) for item in items]


@router.get(
    "/items/{item_id}",
    summary="Get a review item",
    description=(
        "One item with its audit trail (decisions, votes, expired leases, parking) and, once "
        "both are in, its two reviewers' independent decisions. 404 for an item outside the "
        "key's routes or tiers."
    ),
    response_model=ItemDetailOut,
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
async def get_item(
    item_id: str, request: Request, principal: ReviewerKey, now: Now
) -> ItemDetailOut:
    async with gateway(request).sessions() as session:
        try:
            item = await queue.get(session, item_id)
        except ItemNotFound as exc:
            raise item_not_found(item_id) from exc
        if not may_see(principal, item):
            raise item_not_found(item_id)
        entries = await queue.history(session, item_id)
        votes = shown_votes(item, await queue.votes(session, item_id))
    out = ItemOut.of(item, sla_of(request), now)
    return ItemDetailOut(
        **out.model_dump(), history=[HistoryOut.of(e) for e in entries],
        reviews=[VoteOut.of(v) for v in votes],
    )  # fmt: skip


@router.post(
    "/claim",
    summary="Claim the next review item",
    description=(
        "Claims the highest-priority, oldest claimable item (optionally of one route or "
        "reason) for the caller, under a lease of `lease_s` seconds (10 to 3600, default 300). "
        "Returns the item with its fencing token; 204 when nothing is claimable. Items whose "
        "lease ran out are returned to the queue first."
    ),
    response_model=ClaimOut,
    responses={
        **AUTH_ERRORS,
        204: {"description": "Nothing is claimable."},
        400: {"description": "`lease_s` out of bounds."},
    },
)
async def claim(body: ClaimIn, request: Request, principal: ReviewerKey, now: Now) -> Any:
    sla = sla_of(request)
    claimed = await queue.claim_next(
        gateway(request).sessions, reviewer_of(principal), now, body.lease_s,
        scope=scope_of(principal, route=body.route, reason=body.reason, tier=body.tier),
        adjudicator=adjudicates(principal), sla=sla,
    )  # fmt: skip
    if claimed is None:
        return Response(status_code=204)
    return ClaimOut.of(claimed, sla, now)


@router.post(
    "/items/{item_id}/heartbeat",
    summary="Extend a claim",
    description="Extends the caller's live claim to now plus `lease_s` seconds (default 300).",
    response_model=HeartbeatOut,
    responses={**AUTH_ERRORS, **NOT_FOUND, **STALE},
)
async def heartbeat(
    item_id: str, body: HeartbeatIn, request: Request, principal: ReviewerKey, now: Now
) -> HeartbeatOut:
    lease_until = await decisions.renew(
        gateway(request), item_id, body.token, reviewer_of(principal), now, body.lease_s
    )
    return HeartbeatOut(item_id=item_id, token=body.token, lease_until=lease_until)


class UnparkOut(BaseModel):
    item_id: str = Field(description="The review item's id.")
    state: ItemState = Field(
        description="Its state now: `pending`, or `disputed` when two reviewers had already "
        "decided it differently (it waits for an adjudicator)."
    )


@router.post(
    "/items/{item_id}/unpark",
    summary="Return a parked item to the queue",
    description=(
        "A parked item (its leases kept running out) goes back to `pending`, or to `disputed` "
        "when it already has both independent decisions and they differ; its count of run-out "
        "leases starts from zero again. Keys with role lead or admin, within their routes and "
        "tiers. Recorded in the item's history and the audit trail."
    ),
    response_model=UnparkOut,
    responses={
        401: AUTH_ERRORS[401],
        403: {"description": "The key's role is not lead or admin."},
        **NOT_FOUND,
        409: {"description": "The item is not parked."},
    },
)
async def unpark(item_id: str, request: Request, principal: UnparkKey, now: Now) -> UnparkOut:
    state = await parking.unpark(
        gateway(request), principal, item_id, now, api_actor(principal, request)
    )
    return UnparkOut(item_id=item_id, state=state)


@router.post(
    "/items/{item_id}/decision",
    summary="Decide a claimed review item",
    description=(
        "Records the decision on the caller's live claim: `approve` (nothing else), `correct` "
        "(with `corrected_answer`: a JSON value, or text holding one, that must follow the "
        "route's output schema when it has one; free text on a route reviewed without a "
        "schema) or `reject` (with `reason`). Sending the recorded decision again returns it "
        "unchanged; a different one gets 409."
    ),
    response_model=DecisionOut,
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        409: {"description": "The claim is stale, or the item was already decided differently."},
        422: {
            "description": "A corrected answer or reason is missing, not for this kind, or "
            "the corrected answer is not JSON or breaks the route's output schema."
        },
    },
)
async def decide(
    item_id: str, body: DecisionIn, request: Request, principal: ReviewerKey, now: Now
) -> DecisionOut:
    order = DecisionOrder(
        item_id, body.token, reviewer_of(principal), DecisionKind(body.kind), _payload(body), now,
        api_actor(principal, request),
    )  # fmt: skip
    decision = await decisions.decide(gateway(request), order)
    return DecisionOut.of(decision)


@router.get(
    "/stats",
    summary="Review queue figures",
    description=(
        "Undecided items and live claims per route, the age of the oldest item waiting, "
        "how many items are parked; per risk tier the target age and the items past it; per "
        "route the QA estimate (how often reviewers changed an answer nobody escalated, with "
        "its 95 % Wilson interval) and the agreement of two reviewers' independent decisions "
        "(Cohen's kappa, field agreement on corrections), also per reviewer pair. A key "
        "limited to routes or tiers sees the figures of those items alone."
    ),
    response_model=StatsOut,
    responses=AUTH_ERRORS,
)
async def stats(
    request: Request,
    principal: ReviewerKey,
    now: Now,
    window_days: Annotated[
        float,
        Query(gt=0, le=3650, description="QA and agreement figures read items this recent."),
    ] = 30,
) -> StatsOut:
    sla = sla_of(request)
    async with gateway(request).sessions() as session:
        limits = scope_of(principal)
        figures = await queue.queue_stats(session, now, limits)
        overdue = await overdue_counts(session, sla, now, limits.clauses())
        measured = await quality(session, now - timedelta(days=window_days), limits)
    return StatsOut.of(figures, sla, overdue, measured)
