"""The review workflows, one function each, shared by the reviewer API (``api``), the web UI
(``ui``) and any command that needs one: list, read one item, claim, keep a claim alive,
decide, unpark, the queue's figures, and the item an escalated answer becomes (``new_item``,
which the gateway's pipeline writes with the answer's request record).

The handlers only translate their request into a call here, and the result, or the
``GatewayError``, back into their response. The visibility rule is applied here, once: an item
outside the key's routes and tiers reads as not found (404), like an item that does not exist.
Deciding checks a correction against the route's output contract, records the decision on the
caller's live claim, turns the queue's refusals into the gateway's errors and announces the
decision to the route's callback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.actor import Actor
from service.audit.events import record_event
from service.auth import Principal
from service.errors import GatewayError
from service.guard.answers import answer_text
from service.guard.policy import QA_SAMPLE
from service.guard.route_guard import Judgement, RouteContract
from service.guard.tiers import DEFAULT_RISK
from service.review import calibration_reads, claims, decisions, reads
from service.review.calibration_reads import VersionCalibration, per_version
from service.review.errors import ReviewConflict, ReviewDecisionInvalid, ReviewItemNotFound
from service.review.model import (
    DECIDED_STATE,
    AlreadyDecided,
    ClaimedItem,
    Decision,
    DecisionKind,
    HistoryEntry,
    InvalidDecision,
    ItemNotFound,
    ItemState,
    NotParked,
    Outcome,
    QueueStats,
    ReviewItemView,
    StaleClaim,
    Vote,
)
from service.review.quality import Quality, quality
from service.review.queue import NewItem, scope_clauses
from service.review.sla import overdue_counts, sla_targets
from service.review.visibility import adjudicates, may_see, reviewer_of, scope_of, shown_votes

if TYPE_CHECKING:
    from service.review.results import ReviewCallbacks
    from service.routes.snapshot import SnapshotStore
    from service.settings import Settings

# Invalid answers first in the queue; QA samples of unescalated answers last.
REVIEW_PRIORITY = {"invalid": 1, QA_SAMPLE: -1}


class ReviewParts(Protocol):
    """What the workflows use of the gateway (``service.gateway.parts.Gateway`` has it): the
    sessions, the settings (SLA targets), the route snapshot (a correction's output contract)
    and the callbacks of held answers."""

    @property
    def sessions(self) -> async_sessionmaker[Any]: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def snapshot(self) -> SnapshotStore: ...

    @property
    def callbacks(self) -> ReviewCallbacks: ...


@dataclass(frozen=True, slots=True)
class DecisionOrder:
    """A reviewer's decision on the item they claimed under ``token``."""

    item_id: str
    token: int
    reviewer: str
    kind: DecisionKind
    payload: str | None  # the corrected answer (correct), the reason (reject), None (approve)
    now: datetime
    audit: Actor | None = None  # who decides, for the audit trail


@dataclass(frozen=True, slots=True)
class ItemDetail:
    """One item as its reviewer sees it: its audit trail and, once all are in, the reviewers'
    independent decisions (never one before the other's)."""

    item: ReviewItemView
    history: list[HistoryEntry]
    votes: list[Vote]


@dataclass(frozen=True, slots=True)
class Figures:
    """Per risk tier the open items past their target age; QA, agreement and calibration
    figures."""

    overdue: Mapping[str, int]
    quality: Quality
    calibration: list[VersionCalibration]


def item_not_found(item_id: str) -> ReviewItemNotFound:
    return ReviewItemNotFound(f"No review item '{item_id}'.")


def stale_claim(item_id: str) -> ReviewConflict:
    return ReviewConflict(
        f"The claim on review item '{item_id}' is not current: its token is stale or its "
        "lease ran out. Claim an item again."
    )


def _refusal(item_id: str, exc: Exception) -> GatewayError:
    """The gateway's error for a queue refusal (``ItemNotFound``, ``StaleClaim``...)."""
    if isinstance(exc, StaleClaim):
        return stale_claim(item_id)
    if isinstance(exc, AlreadyDecided):
        return ReviewConflict(f"Review item '{item_id}' was already decided differently.")
    if isinstance(exc, InvalidDecision):
        return ReviewDecisionInvalid(f"Invalid decision: {exc}.")
    return item_not_found(item_id)


async def list_items(
    parts: ReviewParts, principal: Principal, now: datetime, *, state: str | None = None,
    route: str | None = None, reason: str | None = None, tier: str | None = None,
    limit: int = 50, offset: int = 0,
) -> list[ReviewItemView]:  # fmt: skip
    """The items of the key's routes and tiers in queue order (overdue first, then priority,
    then age), optionally of one state, route, reason or tier."""
    async with parts.sessions() as session:
        return await reads.list_items(
            session, state=state, limit=limit, offset=offset,
            scope=scope_of(principal, route=route, reason=reason, tier=tier),
            sla=sla_targets(parts.settings), now=now,
        )  # fmt: skip


async def _visible(session: AsyncSession, principal: Principal, item_id: str) -> ReviewItemView:
    """The item, if the key may see it; 404 alike for one outside its routes or tiers and for
    one that does not exist."""
    try:
        item = await reads.get(session, item_id)
    except ItemNotFound as exc:
        raise item_not_found(item_id) from exc
    if not may_see(principal, item):
        raise item_not_found(item_id)
    return item


async def item_detail(parts: ReviewParts, principal: Principal, item_id: str) -> ItemDetail:
    """The item with its history and shown votes; 404 for one the key may not see."""
    async with parts.sessions() as session:
        item = await _visible(session, principal, item_id)
        history = await reads.history(session, item_id)
        votes = shown_votes(item, await reads.votes(session, item_id))
    return ItemDetail(item, history, votes)


async def claim(
    parts: ReviewParts, principal: Principal, now: datetime, lease_s: float, *,
    route: str | None = None, reason: str | None = None, tier: str | None = None,
) -> ClaimedItem | None:  # fmt: skip
    """Claim the next item of the key's routes and tiers (disputed ones first for an
    adjudicator) under a lease of ``lease_s``; None when nothing is claimable."""
    return await claims.claim_next(
        parts.sessions, reviewer_of(principal), now, lease_s,
        scope=scope_of(principal, route=route, reason=reason, tier=tier),
        adjudicator=adjudicates(principal), sla=sla_targets(parts.settings),
    )  # fmt: skip


async def heartbeat(
    parts: ReviewParts,
    principal: Principal,
    item_id: str,
    token: int,
    now: datetime,
    lease_s: float,
) -> datetime:
    """Extend the reviewer's live claim to ``now + lease_s``; the new lease end. 404 for an
    unknown item, 409 when the claim is no longer the reviewer's (stale token, lease ran out)."""
    try:
        return await claims.heartbeat(
            parts.sessions, item_id, token, reviewer_of(principal), now, lease_s
        )
    except ItemNotFound as exc:
        raise item_not_found(item_id) from exc
    except StaleClaim as exc:
        raise stale_claim(item_id) from exc


def state_after(decision: Decision) -> ItemState:
    """The item's state once ``decision`` is in: the decided state only for a final decision;
    a first of two decisions leaves it pending (for the other reviewer), a dispute disputed."""
    if decision.outcome is Outcome.VOTED:
        return ItemState.PENDING
    if decision.outcome is Outcome.DISPUTED:
        return ItemState.DISPUTED
    return DECIDED_STATE[decision.kind]


def check_corrected_answer(contract: RouteContract | None, answer: str) -> None:
    """A correction follows the route's output schema; on a route reviewed without a schema any
    text is an answer; where the route is unknown, it must at least be JSON."""
    if contract is not None and contract.validator is None:
        return
    if contract is None or contract.validator is None:
        try:
            orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise ReviewDecisionInvalid(
                "The corrected answer is not valid JSON.", param="corrected_answer"
            ) from exc
        return
    verdict = contract.validator.validate(answer)
    if not verdict.valid:
        raise ReviewDecisionInvalid(
            "The corrected answer breaks the route's output schema: " + "; ".join(verdict.errors),
            param="corrected_answer",
        )


def _with_decision(
    parts: ReviewParts, audit: Actor | None
) -> Callable[[AsyncSession, Decision], Awaitable[None]]:
    """What a new decision writes in its own transaction: its audit event and, for a held
    answer whose route names a callback, the callback's outbox row."""

    async def write(session: AsyncSession, decision: Decision) -> None:
        if audit is not None:
            await record_event(
                session, audit, f"review.{decision.kind.value}", f"review_item:{decision.item_id}",
                before={"state": "claimed", "token": decision.token},
                after={"state": state_after(decision).value,
                       "outcome": decision.outcome.value, "reviewer": decision.reviewer,
                       "reject_reason": decision.reject_reason,
                       "corrected": decision.corrected_answer is not None},
            )  # fmt: skip
        if decision.outcome is Outcome.DECIDED:  # not a vote, not a dispute
            await parts.callbacks.enqueue(session, decision.item_id, decision.at)

    return write


async def decide(parts: ReviewParts, order: DecisionOrder) -> Decision:
    """Record the decision and post it to the route's callback; a ``GatewayError`` if refused.

    404 for an unknown item, 409 for a stale claim or a different earlier decision, 422 for a
    missing answer or reason, or a correction that breaks the route's output contract.
    """
    item_id = order.item_id
    try:
        if order.kind is DecisionKind.CORRECT and order.payload and order.payload.strip():
            async with parts.sessions() as session:
                item = await reads.get(session, item_id)
            route = parts.snapshot.current.routes.get(item.route)
            check_corrected_answer(route.contract if route else None, order.payload)
        decision = await decisions.decide(
            parts.sessions, item_id, order.token, order.reviewer, order.kind, order.payload,
            order.now, _with_decision(parts, order.audit),
        )  # fmt: skip
    except (ItemNotFound, StaleClaim, AlreadyDecided, InvalidDecision) as exc:
        raise _refusal(item_id, exc) from exc
    if decision.outcome is Outcome.DECIDED:
        parts.callbacks.decided(item_id)
    return decision


async def unpark(
    parts: ReviewParts, principal: Principal, item_id: str, now: datetime, audit: Actor
) -> ItemState:
    """Return the parked item to the queue; its new state. 404 for an item that does not exist
    or lies outside the key's routes and tiers, 409 for one not parked. The change, its history
    row and its audit event are written in one transaction."""
    async with parts.sessions() as session:
        item = await _visible(session, principal, item_id)

    async def audited(session: AsyncSession, state: ItemState) -> None:
        await record_event(
            session, audit, "review.unpark", f"review_item:{item_id}",
            before={"state": ItemState.PARKED.value, "expiries": item.expiries},
            after={"state": state.value, "expiries": 0},
        )  # fmt: skip

    try:
        return await claims.unpark(parts.sessions, item_id, principal.key_id, now, audited)
    except ItemNotFound as exc:
        raise item_not_found(item_id) from exc
    except NotParked as exc:
        raise ReviewConflict(
            f"Review item '{item_id}' is {exc.state}, not parked: only a parked item can be "
            "unparked."
        ) from exc


async def _figures(
    session: AsyncSession,
    parts: ReviewParts,
    principal: Principal,
    now: datetime,
    window: timedelta,
) -> Figures:
    limits = scope_of(principal)  # the key's own routes and tiers, never a page's filters
    overdue = await overdue_counts(session, sla_targets(parts.settings), now, scope_clauses(limits))
    since = now - window
    versions = per_version(await calibration_reads.reviewed(session, since, limits))
    return Figures(overdue, await quality(session, since, limits), versions)


async def figures(
    parts: ReviewParts, principal: Principal, now: datetime, window: timedelta
) -> Figures:
    """Overdue counts, and QA and agreement figures over ``window``, of the key's items."""
    async with parts.sessions() as session:
        return await _figures(session, parts, principal, now, window)


async def stats(
    parts: ReviewParts, principal: Principal, now: datetime, window: timedelta
) -> tuple[QueueStats, Figures]:
    """The queue's depth, claims, oldest age and parked count, with ``figures``, of the key's
    items."""
    async with parts.sessions() as session:
        depth = await reads.queue_stats(session, now, scope_of(principal))
        return depth, await _figures(session, parts, principal, now, window)


def new_item(
    judgement: Judgement, contract: RouteContract | None, *, item_id: str, request_id: str,
    route: str, target: str, reason: str, answer: dict[str, Any], created_at: datetime,
    request_body: str | None,
) -> NewItem:  # fmt: skip
    """The review item a judged answer becomes when its route's policy sends it to review (the
    ``reason``): handed out by its reason's priority, in its route's risk tier, to as many
    reviewers as the judgement drew, with the answer's text, confidence and schema errors."""
    confidence = judgement.confidence
    policy = contract.policy if contract is not None else None
    return NewItem(
        item_id=item_id, request_id=request_id, route=route, target=target, reason=reason,
        answer=answer_text(answer, chat=True) or "", created_at=created_at,
        priority=REVIEW_PRIORITY.get(reason, 0),
        risk=policy.risk.value if policy is not None else DEFAULT_RISK.value,
        reviews_needed=judgement.reviewers, request_body=request_body,
        confidence=confidence.score if confidence is not None else None,
        field_confidence=dict(confidence.fields) if confidence is not None else None,
        schema_errors=list(judgement.errors) or None,
    )  # fmt: skip
