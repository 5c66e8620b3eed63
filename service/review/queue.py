"""The review queue in the database: claims under a lease with a fencing token, and decisions.

An item is ``pending`` until a reviewer claims it. A claim sets a lease (``lease_until``) and
bumps ``claim_token``, the fencing token: every later heartbeat or decision must carry it, so a
reviewer whose lease ran out (and whose item someone else has since claimed) is refused with
``StaleClaim`` instead of overwriting the newer claimant's work. Decisions are conditional
UPDATEs (``WHERE claim_token = :token AND state = 'claimed' AND lease_until >= :now``), so of two
racing decisions at most one matches, and each is appended to ``review_decisions`` in the same
transaction. The audit trail is only ever inserted into.

A lease that has run out returns its item to ``pending`` the next time anyone claims (counted in
``expiries``, with an ``expired`` history row); the item whose expiries reach the limit is
``parked`` for a person to look at instead of being handed out again.

How a claim stays atomic:

- PostgreSQL: ``UPDATE review_items SET ... WHERE id = (SELECT id ... ORDER BY priority DESC,
  created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ...``: concurrent claimers skip the rows
  another transaction holds instead of queueing behind it.
- SQLite: the same single ``UPDATE ... RETURNING`` (without the locking clause) inside a
  transaction opened with ``BEGIN IMMEDIATE``, which takes the database's write lock up front.
  Writers are serialised; a waiting writer is bounded by the busy timeout (``db.session``).

Times are always passed in (``now``), never read here, so leases can be tested tick by tick.
Callers own nothing for the write operations (they take an ``async_sessionmaker`` and run their
own short transaction), except ``enqueue``, which joins the caller's transaction so an item is
written together with its request record.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import orjson
from sqlalchemy import CursorResult, Table, and_, case, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import as_utc, require_utc
from service.db.models import ReviewDecision, ReviewItem, ReviewVote
from service.db.session import insert_ignoring_duplicates
from service.review.sla import SlaTargets, overdue

DEFAULT_MAX_EXPIRIES = 3
# Tokens and offsets live in INTEGER columns: larger numbers cannot name anything stored.
MAX_INT = 2**31 - 1
# Expired leases released per claim at most (there are about as many as reviewers at work).
RELEASE_BATCH = 100


class ItemState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    APPROVED = "approved"
    CORRECTED = "corrected"
    REJECTED = "rejected"
    PARKED = "parked"
    DISPUTED = "disputed"  # two reviewers disagreed: waiting for an adjudicator


class DecisionKind(StrEnum):
    APPROVE = "approve"
    CORRECT = "correct"
    REJECT = "reject"


# History kinds besides the decisions.
EXPIRED = "expired"
PARKED = "parked"
VOTE = "vote"  # one of two independent decisions; its content is in review_votes
DISPUTED = "disputed"
UNPARKED = "unparked"  # a person returned a parked item to the queue


class Outcome(StrEnum):
    """What a decision did to its item."""

    DECIDED = "decided"  # the item's final decision
    VOTED = "voted"  # the first of two independent decisions: the item waits for another
    DISPUTED = "disputed"  # the second disagreed with the first: an adjudicator decides


DECIDED_STATE = {
    DecisionKind.APPROVE: ItemState.APPROVED,
    DecisionKind.CORRECT: ItemState.CORRECTED,
    DecisionKind.REJECT: ItemState.REJECTED,
}
KIND_OF_STATE = {state.value: kind for kind, state in DECIDED_STATE.items()}


class StaleClaim(Exception):
    """The claim token is not the item's current one, or its lease has run out."""


class AlreadyDecided(Exception):
    """The item was already decided, differently (or by someone else)."""


class ItemNotFound(Exception):
    """No review item has this id."""


class InvalidDecision(ValueError):
    """The decision lacks what its kind needs (a corrected answer, a reject reason)."""


class NotParked(Exception):
    """The item is not parked (so there is nothing to unpark); ``state`` is its state."""

    def __init__(self, item_id: str, state: str) -> None:
        super().__init__(item_id)
        self.state = state


@dataclass(frozen=True, slots=True)
class ReviewItemView:
    id: str
    request_id: str
    route: str
    target: str
    reason: str
    priority: int
    state: ItemState
    created_at: datetime
    claimed_by: str | None
    lease_until: datetime | None
    claim_token: int
    expiries: int
    answer: str
    request_body: str | None
    confidence: float | None
    field_confidence: Mapping[str, float] | None
    schema_errors: Sequence[Any] | None
    decided_at: datetime | None
    decided_by: str | None
    corrected_answer: str | None
    reject_reason: str | None
    risk: str = "medium"
    reviews_needed: int = 1
    votes: int = 0
    sla_breached_at: datetime | None = None

    @property
    def adjudication(self) -> bool:
        """Two reviewers disagreed on it: only an adjudicator decides it now."""
        return self.reviews_needed > 1 and self.votes >= self.reviews_needed


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    item: ReviewItemView
    token: int
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    item_id: str
    kind: DecisionKind
    reviewer: str
    token: int
    at: datetime
    corrected_answer: str | None
    reject_reason: str | None
    outcome: Outcome = Outcome.DECIDED


@dataclass(frozen=True, slots=True)
class Vote:
    """One reviewer's independent decision on an item that needs two."""

    item_id: str
    seq: int
    reviewer: str
    kind: DecisionKind
    at: datetime
    corrected_answer: str | None
    reject_reason: str | None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which items a reviewer may see and claim (a key's limits), and how to filter them."""

    routes: frozenset[str] | None = None  # the key's allowed routes (None: all)
    tiers: frozenset[str] | None = None  # the key's allowed risk tiers (None: all)
    route: str | None = None
    reason: str | None = None
    tier: str | None = None

    def clauses(self) -> list[Any]:
        found: list[Any] = []
        if self.routes is not None:
            found.append(ReviewItem.route.in_(sorted(self.routes)))
        if self.tiers is not None:
            found.append(ReviewItem.risk.in_(sorted(self.tiers)))
        if self.route is not None:
            found.append(ReviewItem.route == self.route)
        if self.reason is not None:
            found.append(ReviewItem.reason == self.reason)
        if self.tier is not None:
            found.append(ReviewItem.risk == self.tier)
        return found


EVERYTHING = Scope()  # an admin's view: every route and tier


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    item_id: str
    at: datetime
    reviewer: str
    kind: str
    claim_token: int
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: Mapping[str, int]  # per route: undecided items (pending or claimed)
    claimed: Mapping[str, int]  # per route: items held under a lease that has not run out
    oldest_pending_age_s: float | None  # oldest item nobody holds a live lease on
    parked: int


def _view(row: Any) -> ReviewItemView:
    """From an ORM row or a Core row of ``review_items`` (same attribute names)."""
    return ReviewItemView(
        id=row.id, request_id=row.request_id, route=row.route, target=row.target,
        reason=row.reason, priority=row.priority, state=ItemState(row.state),
        created_at=as_utc(row.created_at), claimed_by=row.claimed_by,
        lease_until=as_utc(row.lease_until) if row.lease_until is not None else None,
        claim_token=row.claim_token,
        expiries=row.expiries, answer=row.answer, request_body=row.request_body,
        confidence=row.confidence, field_confidence=row.field_confidence,
        schema_errors=row.schema_errors,
        decided_at=as_utc(row.decided_at) if row.decided_at is not None else None,
        decided_by=row.decided_by, corrected_answer=row.corrected_answer,
        reject_reason=row.reject_reason, risk=row.risk, reviews_needed=row.reviews_needed,
        votes=row.votes,
        sla_breached_at=as_utc(row.sla_breached_at) if row.sla_breached_at else None,
    )  # fmt: skip


def _recorded(row: Any) -> Decision | None:
    kind = KIND_OF_STATE.get(row.state)
    if kind is None or row.decided_at is None or row.decided_by is None:
        return None
    return Decision(
        row.id, kind, row.decided_by, row.claim_token, as_utc(row.decided_at),
        row.corrected_answer, row.reject_reason,
    )  # fmt: skip


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


async def _is_postgres(session: AsyncSession) -> bool:
    return (await session.connection()).dialect.name == "postgresql"


@asynccontextmanager
async def write_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A short transaction that commits on exit; on SQLite it holds the write lock from the start.

    Python's sqlite3 would open a deferred transaction, which in WAL mode can fail at once with
    "database is locked" (no busy wait) when a read is followed by a write and another writer
    got in between. ``BEGIN IMMEDIATE`` takes the lock first, waiting at most the busy timeout.
    """
    async with sessions() as session, session.begin():
        connection = await session.connection()
        if connection.dialect.name == "sqlite":
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield session


@dataclass(frozen=True, slots=True)
class NewItem:
    """An escalated answer, to be queued with its request record."""

    request_id: str
    route: str
    target: str
    reason: str
    answer: str
    created_at: datetime
    priority: int = 0
    request_body: str | None = None
    confidence: float | None = None
    field_confidence: Mapping[str, float] | None = None
    schema_errors: Sequence[Any] | None = None
    item_id: str | None = None
    risk: str = "medium"
    reviews_needed: int = 1  # 2: decided by two reviewers independently


def _item_row(item: NewItem, item_id: str) -> dict[str, Any]:
    fields, errors = item.field_confidence, item.schema_errors
    return {
        "id": item_id, "request_id": item.request_id, "route": item.route,
        "target": item.target, "reason": item.reason, "priority": item.priority,
        "state": ItemState.PENDING.value, "created_at": require_utc(item.created_at),
        "claimed_by": None, "lease_until": None, "claim_token": 0, "expiries": 0,
        "answer": item.answer, "request_body": item.request_body,
        "confidence": item.confidence,
        "field_confidence": dict(fields) if fields is not None else None,
        "schema_errors": list(errors) if errors is not None else None,
        "risk": item.risk, "reviews_needed": item.reviews_needed, "votes": 0,
        "sla_breached_at": None,
    }  # fmt: skip


async def enqueue(session: AsyncSession, item: NewItem) -> str:
    """Add a pending item to the caller's transaction (with its request record); returns its id.

    Nothing is flushed or committed here: the caller's unit of work writes the record and the
    item together, or neither.
    """
    item_id = item.item_id or uuid.uuid4().hex
    session.add(ReviewItem(**_item_row(item, item_id)))
    return item_id


async def enqueue_shipped(session: AsyncSession, items: Sequence[NewItem]) -> None:
    """Add the items that came with shipped records; an id already queued is left as it is.

    Records are shipped at least once (a segment may be shipped again after a crash), so the
    item id, given by the gateway, makes the second insert a no-op.
    """
    rows = [_item_row(item, item.item_id or uuid.uuid4().hex) for item in items]
    table = cast(Table, ReviewItem.__table__)
    await session.execute(insert_ignoring_duplicates(session, table), rows)


def _claim_order(sla: SlaTargets | None = None, now: datetime | None = None) -> tuple[Any, ...]:
    """Overdue items first (with SLA targets), then the highest priority, then the oldest."""
    order: tuple[Any, ...] = (ReviewItem.priority.desc(), ReviewItem.created_at, ReviewItem.id)
    if sla is not None and now is not None:
        order = (case((overdue(sla, now), 0), else_=1), *order)
    return order


async def _release_expired(session: AsyncSession, now: datetime, max_expiries: int) -> int:
    """Return items whose lease ran out to ``pending`` (or ``parked``); inside a claim."""
    query = (
        select(
            ReviewItem.id, ReviewItem.claim_token, ReviewItem.claimed_by, ReviewItem.lease_until,
            ReviewItem.expiries, ReviewItem.votes, ReviewItem.reviews_needed,
        )
        .where(ReviewItem.state == ItemState.CLAIMED.value, ReviewItem.lease_until < now)
        .order_by(*_claim_order())
        .limit(RELEASE_BATCH)
    )  # fmt: skip
    if await _is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    released = 0
    rows = (await session.execute(query)).all()
    for item_id, token, holder, lease_until, expiries, votes, needed in rows:
        count = expiries + 1
        parked = count >= max_expiries
        # A disputed item's adjudication claim ran out: it waits for an adjudicator again.
        back = ItemState.DISPUTED if 1 < needed <= votes else ItemState.PENDING
        result = await session.execute(
            update(ReviewItem)
            .where(
                ReviewItem.id == item_id,
                ReviewItem.claim_token == token,
                ReviewItem.state == ItemState.CLAIMED.value,
            )
            .values(
                state=(ItemState.PARKED if parked else back).value,
                expiries=count,
                claimed_by=None,
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:
            continue
        released += 1
        reviewer = holder or ""
        ended = as_utc(lease_until).isoformat() if lease_until is not None else None
        session.add(
            ReviewDecision(
                item_id=item_id, at=now, reviewer=reviewer, kind=EXPIRED, claim_token=token,
                payload={"lease_until": ended, "expiries": count},
            )
        )  # fmt: skip
        if parked:
            session.add(
                ReviewDecision(
                    item_id=item_id, at=now, reviewer=reviewer, kind=PARKED, claim_token=token,
                    payload={"expiries": count, "limit": max_expiries},
                )
            )  # fmt: skip
    if released:
        await session.flush()
    return released


async def release_expired(
    sessions: async_sessionmaker[AsyncSession], now: datetime,
    max_expiries: int = DEFAULT_MAX_EXPIRIES,
) -> int:  # fmt: skip
    """Release run-out leases now (every claim does this too); returns how many it released."""
    async with write_transaction(sessions) as session:
        return await _release_expired(session, require_utc(now), max_expiries)


def _not_voted_by(reviewer: str) -> Any:
    """The reviewer has not decided the item already (as one of its two reviewers)."""
    voted = exists().where(ReviewVote.item_id == ReviewItem.id, ReviewVote.reviewer == reviewer)
    return or_(ReviewItem.votes == 0, ~voted)


async def claim_next(
    sessions: async_sessionmaker[AsyncSession], reviewer: str, now: datetime, lease_s: float,
    *, route: str | None = None, reason: str | None = None,
    max_expiries: int = DEFAULT_MAX_EXPIRIES, scope: Scope | None = None,
    adjudicator: bool = False, sla: SlaTargets | None = None,
) -> ClaimedItem | None:  # fmt: skip
    """Claim the first claimable item in queue order (optionally of one route or reason, and
    within ``scope``): overdue items first when ``sla`` is given, then the highest priority,
    then the oldest; for an ``adjudicator``, disputed items before all others.

    Claimable: ``pending`` (``disputed`` too for an adjudicator) and not already decided by
    this reviewer as one of its two reviewers, or ``claimed`` under a lease that ran out before
    ``now`` (released first, in the same transaction; see ``_release_expired``). Returns
    ``None`` when nothing is claimable.
    """
    if lease_s <= 0:
        raise ValueError("lease_s must be positive")
    now = require_utc(now)
    lease_until = now + timedelta(seconds=lease_s)
    states = [ItemState.PENDING.value]
    if adjudicator:
        states.append(ItemState.DISPUTED.value)
    async with write_transaction(sessions) as session:
        await _release_expired(session, now, max_expiries)
        pick = select(ReviewItem.id).where(ReviewItem.state.in_(states), _not_voted_by(reviewer))
        wanted = Scope(route=route, reason=reason) if scope is None else scope
        if scope is not None and (route is not None or reason is not None):
            wanted = Scope(scope.routes, scope.tiers, route, reason, scope.tier)
        for clause in wanted.clauses():
            pick = pick.where(clause)
        order = _claim_order(sla, now)
        if adjudicator:
            order = (case((ReviewItem.state == ItemState.DISPUTED.value, 0), else_=1), *order)
        pick = pick.order_by(*order).limit(1)
        if await _is_postgres(session):
            pick = pick.with_for_update(skip_locked=True)
        claim = (
            update(ReviewItem)
            .where(
                ReviewItem.id == pick.scalar_subquery(),
                ReviewItem.state.in_(states),
            )
            .values(
                state=ItemState.CLAIMED.value,
                claimed_by=reviewer,
                lease_until=lease_until,
                claim_token=ReviewItem.claim_token + 1,
            )
            .returning(*ReviewItem.__table__.columns)
            .execution_options(synchronize_session=False)
        )
        row = (await session.execute(claim)).one_or_none()
    if row is None:
        return None
    item = _view(row)
    return ClaimedItem(item, item.claim_token, lease_until)


async def _missing_or_stale(session: AsyncSession, item_id: str) -> Exception:
    found = await session.scalar(select(ReviewItem.id).where(ReviewItem.id == item_id))
    return ItemNotFound(item_id) if found is None else StaleClaim(item_id)


def _holds(item_id: str, token: int, reviewer: str, now: datetime) -> tuple[Any, ...]:
    """The claim is current: this token, this reviewer, and a lease that has not run out."""
    return (
        ReviewItem.id == item_id,
        ReviewItem.claim_token == token,
        ReviewItem.claimed_by == reviewer,
        ReviewItem.state == ItemState.CLAIMED.value,
        ReviewItem.lease_until >= now,
    )


async def heartbeat(
    sessions: async_sessionmaker[AsyncSession], item_id: str, token: int, reviewer: str,
    now: datetime, lease_s: float,
) -> datetime:  # fmt: skip
    """Extend a live claim to ``now + lease_s``; returns the new lease end.

    ``StaleClaim`` when the token is not current or the lease already ran out.
    """
    if lease_s <= 0:
        raise ValueError("lease_s must be positive")
    now = require_utc(now)
    lease_until = now + timedelta(seconds=lease_s)
    async with write_transaction(sessions) as session:
        result = await session.execute(
            update(ReviewItem)
            .where(*_holds(item_id, token, reviewer, now))
            .values(lease_until=lease_until)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:
            raise await _missing_or_stale(session, item_id)
    return lease_until


def _decision_values(kind: DecisionKind, payload: str | None) -> dict[str, Any]:
    if kind is DecisionKind.APPROVE:
        if payload is not None:
            raise InvalidDecision("an approval carries no payload")
        return {"corrected_answer": None, "reject_reason": None}
    if payload is None or not payload.strip():
        need = "the corrected answer" if kind is DecisionKind.CORRECT else "a reason"
        raise InvalidDecision(f"{kind.value} needs {need}")
    if kind is DecisionKind.CORRECT:
        return {"corrected_answer": payload, "reject_reason": None}
    return {"corrected_answer": None, "reject_reason": payload}


def _history_payload(kind: DecisionKind, payload: str | None) -> dict[str, Any]:
    if kind is DecisionKind.CORRECT:
        return {"corrected_answer": payload}
    if kind is DecisionKind.REJECT:
        return {"reason": payload}
    return {}


def _same_answer(first: str | None, second: str | None) -> bool:
    """Two corrected answers agree when they are the same JSON value (else the same text)."""
    if first is None or second is None:
        return first == second
    try:
        return bool(orjson.loads(first) == orjson.loads(second))
    except orjson.JSONDecodeError:
        return first == second


def _agree(first: Vote, kind: DecisionKind, corrected: str | None) -> bool:
    if first.kind is not kind:
        return False
    return kind is not DecisionKind.CORRECT or _same_answer(first.corrected_answer, corrected)


def _vote_of(row: ReviewVote) -> Vote:
    return Vote(
        row.item_id, row.seq, row.reviewer, DecisionKind(row.kind), as_utc(row.at),
        row.corrected_answer, row.reject_reason,
    )  # fmt: skip


def _final_values(kind: DecisionKind, values: dict[str, Any], first: Vote) -> dict[str, Any]:
    """Two agreeing votes' decision: both reasons of two rejections, when they differ."""
    if kind is DecisionKind.REJECT and first.reject_reason != values["reject_reason"]:
        return {**values, "reject_reason": f"{first.reject_reason} / {values['reject_reason']}"}
    return values


async def _final(
    session: AsyncSession, order: Decision, values: dict[str, Any], extra: dict[str, Any],
    history: dict[str, Any],
) -> int:  # fmt: skip
    """The item's final decision on the live claim: its state, and its history row."""
    result = await session.execute(
        update(ReviewItem)
        .where(*_holds(order.item_id, order.token, order.reviewer, order.at))
        .values(
            state=DECIDED_STATE[order.kind].value, decided_at=order.at, decided_by=order.reviewer,
            lease_until=None, **values, **extra,
        )
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    if _rowcount(result) == 1:
        session.add(
            ReviewDecision(
                item_id=order.item_id, at=order.at, reviewer=order.reviewer,
                kind=order.kind.value, claim_token=order.token, payload=history,
            )
        )  # fmt: skip
    return _rowcount(result)


async def _vote(
    session: AsyncSession, order: Decision, values: dict[str, Any], votes: int, needed: int
) -> Decision | None:
    """Record one of the independent decisions; the last one decides, or disputes, the item."""
    seq = votes + 1
    session.add(
        ReviewVote(
            item_id=order.item_id, seq=seq, reviewer=order.reviewer, kind=order.kind.value,
            claim_token=order.token, at=order.at, **values,
        )
    )  # fmt: skip
    session.add(
        ReviewDecision(
            item_id=order.item_id, at=order.at, reviewer=order.reviewer, kind=VOTE,
            claim_token=order.token, payload={"seq": seq},
        )
    )  # fmt: skip
    await session.flush()  # the unique constraints refuse a second vote of this reviewer now
    if seq < needed:
        outcome, state = Outcome.VOTED, ItemState.PENDING
    else:
        first = _vote_of(
            (
                await session.scalars(
                    select(ReviewVote).where(
                        ReviewVote.item_id == order.item_id, ReviewVote.seq == 1
                    )
                )
            ).one()
        )
        if _agree(first, order.kind, values["corrected_answer"]):
            final = _final_values(order.kind, values, first)
            history = {**_history_payload(order.kind, final["corrected_answer"]
                                           or final["reject_reason"]),
                       "agreed_with": first.reviewer}  # fmt: skip
            if await _final(session, order, final, {"votes": seq}, history) != 1:
                return None
            return replace(order, outcome=Outcome.DECIDED, **final)
        outcome, state = Outcome.DISPUTED, ItemState.DISPUTED
    result = await session.execute(
        update(ReviewItem)
        .where(*_holds(order.item_id, order.token, order.reviewer, order.at))
        .values(state=state.value, votes=seq, claimed_by=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    if outcome is Outcome.DISPUTED:
        session.add(
            ReviewDecision(
                item_id=order.item_id, at=order.at, reviewer=order.reviewer, kind=DISPUTED,
                claim_token=order.token, payload={"votes": seq},
            )
        )  # fmt: skip
    return replace(order, outcome=outcome)


async def _repeated(session: AsyncSession, order: Decision, values: dict[str, Any]) -> Decision:
    """The answer to a decision whose claim is no longer live: the same decision again when it
    was recorded (idempotent), else ``StaleClaim``, ``AlreadyDecided`` or ``ItemNotFound``."""
    row = await session.get(ReviewItem, order.item_id)
    if row is None:
        raise ItemNotFound(order.item_id)
    cast_vote = await session.scalar(
        select(ReviewVote).where(
            ReviewVote.item_id == order.item_id,
            ReviewVote.reviewer == order.reviewer,
            ReviewVote.claim_token == order.token,
        )
    )
    if cast_vote is not None:
        vote = _vote_of(cast_vote)
        same = (vote.kind is order.kind and vote.corrected_answer == values["corrected_answer"]
                and vote.reject_reason == values["reject_reason"])  # fmt: skip
        if not same:
            raise AlreadyDecided(order.item_id)
        if vote.seq < row.reviews_needed:
            outcome = Outcome.VOTED
        elif row.decided_by == order.reviewer and row.claim_token == order.token:
            outcome = Outcome.DECIDED
        else:
            outcome = Outcome.DISPUTED
        return replace(order, at=vote.at, outcome=outcome, **values)
    recorded = _recorded(row)
    if recorded is None or recorded.token != order.token:
        raise StaleClaim(order.item_id)
    same = (
        recorded.reviewer == order.reviewer
        and recorded.kind is order.kind
        and recorded.corrected_answer == values["corrected_answer"]
        and recorded.reject_reason == values["reject_reason"]
    )
    if not same:
        raise AlreadyDecided(order.item_id)
    return recorded


# Called in a new decision's transaction (a vote too: see ``Decision.outcome``).
OnDecided = Callable[[AsyncSession, "Decision"], Awaitable[None]]


async def decide(
    sessions: async_sessionmaker[AsyncSession], item_id: str, token: int, reviewer: str,
    kind: DecisionKind | str, payload: str | None, now: datetime,
    on_decided: OnDecided | None = None,
) -> Decision:  # fmt: skip
    """Record a decision on a live claim, with its history row, in one transaction.

    ``payload``: the corrected answer for ``correct`` (validated by the caller against the
    route's schema), the reason for ``reject``, nothing for ``approve``.

    On an item that needs two reviewers, the first decision is a vote (``Outcome.VOTED``: the
    item is pending again for anyone else); the second decides the item when both agree (the
    same kind, and for corrections the same JSON value), else disputes it (``DISPUTED``: an
    adjudicator's claim decides it).

    Repeating the recorded decision (same reviewer, token, kind and payload) returns it again
    without a second history row (and without calling ``on_decided``, which runs in the
    transaction of every new decision). ``AlreadyDecided`` for a different decision on a
    decided item; ``StaleClaim`` for a token that is not current or a lease that ran out;
    ``ItemNotFound``; ``InvalidDecision`` for a missing reason or answer.
    """
    kind = DecisionKind(kind)
    values = _decision_values(kind, payload)
    now = require_utc(now)
    order = Decision(item_id, kind, reviewer, token, now, **values)
    async with write_transaction(sessions) as session:
        held = select(ReviewItem.votes, ReviewItem.reviews_needed).where(
            *_holds(item_id, token, reviewer, now)
        )
        if await _is_postgres(session):
            held = held.with_for_update()
        live = (await session.execute(held)).one_or_none()
        if live is not None:
            votes, needed = live
            if votes < needed and needed > 1:
                voted = await _vote(session, order, values, votes, needed)
                if voted is None:  # cannot happen under a held claim; never keep a half vote
                    raise StaleClaim(item_id)
                if on_decided is not None:
                    await on_decided(session, voted)
                return voted
            history = _history_payload(kind, payload)
            if needed > 1:
                history["adjudicated"] = True
            if await _final(session, order, values, {}, history) == 1:
                if on_decided is not None:
                    await on_decided(session, order)
                return order
        return await _repeated(session, order, values)


# Called in an unpark's transaction with the item's new state.
OnUnparked = Callable[[AsyncSession, ItemState], Awaitable[None]]


async def unpark(
    sessions: async_sessionmaker[AsyncSession], item_id: str, by: str, now: datetime,
    on_unparked: OnUnparked | None = None,
) -> ItemState:  # fmt: skip
    """Return a parked item to the queue, its expiries counted from zero again; returns its
    new state: ``disputed`` when it already has all its independent decisions (two reviewers
    who disagreed: it waits for an adjudicator again), else ``pending``.

    ``by`` is recorded in the item's history (kind ``unparked``). ``NotParked`` when the item
    is in any other state, ``ItemNotFound`` when there is none.
    """
    now = require_utc(now)
    async with write_transaction(sessions) as session:
        query = select(
            ReviewItem.state, ReviewItem.votes, ReviewItem.reviews_needed, ReviewItem.claim_token,
            ReviewItem.expiries,
        ).where(ReviewItem.id == item_id)  # fmt: skip
        if await _is_postgres(session):
            query = query.with_for_update()
        row = (await session.execute(query)).one_or_none()
        if row is None:
            raise ItemNotFound(item_id)
        state, votes, needed, token, expiries = row
        if state != ItemState.PARKED.value:
            raise NotParked(item_id, state)
        back = ItemState.DISPUTED if 1 < needed <= votes else ItemState.PENDING
        result = await session.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id, ReviewItem.state == ItemState.PARKED.value)
            .values(state=back.value, expiries=0, claimed_by=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(result) != 1:  # cannot happen under the row lock / write lock
            raise NotParked(item_id, state)
        session.add(
            ReviewDecision(
                item_id=item_id, at=now, reviewer=by, kind=UNPARKED, claim_token=token,
                payload={"state": back.value, "expiries": expiries},
            )
        )  # fmt: skip
        await session.flush()
        if on_unparked is not None:
            await on_unparked(session, back)
    return back


async def get(session: AsyncSession, item_id: str) -> ReviewItemView:
    row = await session.get(ReviewItem, item_id, populate_existing=True)
    if row is None:
        raise ItemNotFound(item_id)
    return _view(row)


async def list_items(
    session: AsyncSession, *, state: str | None = None, route: str | None = None,
    reason: str | None = None, limit: int = 50, offset: int = 0, scope: Scope | None = None,
    sla: SlaTargets | None = None, now: datetime | None = None,
) -> list[ReviewItemView]:  # fmt: skip
    """Items in claim order (overdue first when ``sla`` and ``now`` are given, then priority,
    then age), optionally filtered."""
    query = select(ReviewItem)
    if state is not None:
        query = query.where(ReviewItem.state == ItemState(state).value)
    if route is not None:
        query = query.where(ReviewItem.route == route)
    if reason is not None:
        query = query.where(ReviewItem.reason == reason)
    for clause in (scope or Scope()).clauses():
        query = query.where(clause)
    order = _claim_order(sla, require_utc(now) if now is not None else None)
    query = query.order_by(*order).limit(limit).offset(offset)
    return [_view(row) for row in await session.scalars(query)]


async def votes(session: AsyncSession, item_id: str) -> list[Vote]:
    """The independent decisions on an item so far, in the order they came."""
    query = select(ReviewVote).where(ReviewVote.item_id == item_id).order_by(ReviewVote.seq)
    return [_vote_of(row) for row in await session.scalars(query)]


async def history(session: AsyncSession, item_id: str) -> list[HistoryEntry]:
    query = (
        select(ReviewDecision).where(ReviewDecision.item_id == item_id).order_by(ReviewDecision.id)
    )
    return [
        HistoryEntry(
            row.id,
            row.item_id,
            as_utc(row.at),
            row.reviewer,
            row.kind,
            row.claim_token,
            dict(row.payload),
        )
        for row in await session.scalars(query)
    ]


async def queue_stats(
    session: AsyncSession, now: datetime, scope: Scope = EVERYTHING
) -> QueueStats:
    """Depth and live claims per route, oldest waiting age, parked count, of the items in
    ``scope`` (a key's routes and tiers; the metrics read everything)."""
    now = require_utc(now)
    state = ReviewItem.state
    live = and_(state == ItemState.CLAIMED.value, ReviewItem.lease_until >= now)
    open_states = (ItemState.PENDING.value, ItemState.CLAIMED.value, ItemState.DISPUTED.value)
    rows = await session.execute(
        select(ReviewItem.route, func.count(), func.sum(case((live, 1), else_=0)))
        .where(state.in_(open_states), *scope.clauses())
        .group_by(ReviewItem.route)
    )
    depth: dict[str, int] = {}
    claimed: dict[str, int] = {}
    for route, count, held in rows:
        depth[route] = int(count)
        if held:
            claimed[route] = int(held)
    waiting = or_(
        state.in_((ItemState.PENDING.value, ItemState.DISPUTED.value)),
        and_(state == ItemState.CLAIMED.value, ReviewItem.lease_until < now),
    )
    oldest = await session.scalar(
        select(func.min(ReviewItem.created_at)).where(waiting, *scope.clauses())
    )
    parked = await session.scalar(
        select(func.count())
        .select_from(ReviewItem)
        .where(state == ItemState.PARKED.value, *scope.clauses())
    )
    age = (now - as_utc(oldest)).total_seconds() if oldest is not None else None
    return QueueStats(depth, claimed, age, int(parked or 0))


async def decided_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many items each adapter version (target) had approved, corrected or rejected."""
    decided = (ItemState.APPROVED.value, ItemState.CORRECTED.value, ItemState.REJECTED.value)
    rows = await session.execute(
        select(ReviewItem.target, ReviewItem.state, func.count())
        .where(ReviewItem.state.in_(decided))
        .group_by(ReviewItem.target, ReviewItem.state)
    )
    return {(target, state): int(count) for target, state, count in rows}
