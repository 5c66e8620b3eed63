"""Decisions on claimed review items, and the independent votes of items two reviewers decide.

Decisions are conditional UPDATEs (``WHERE claim_token = :token AND state = 'claimed' AND
lease_until >= :now``), so of two racing decisions at most one matches, and each is appended to
``review_decisions`` in the same transaction. The audit trail is only ever inserted into.

On an item that needs two reviewers, each decision is a vote (``review_votes``): the first
leaves the item pending for another reviewer; the second decides it when both agree, else
disputes it, and an adjudicator's claim decides it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import as_utc, require_utc
from service.db.models import ReviewDecision, ReviewItem, ReviewVote
from service.review.claims import holds
from service.review.model import (
    DECIDED_STATE,
    DISPUTED,
    KIND_OF_STATE,
    VOTE,
    AlreadyDecided,
    Decision,
    DecisionKind,
    InvalidDecision,
    ItemNotFound,
    ItemState,
    Outcome,
    StaleClaim,
    Vote,
)
from service.review.queue import is_postgres, rowcount, write_transaction


def _recorded(row: Any) -> Decision | None:
    kind = KIND_OF_STATE.get(row.state)
    if kind is None or row.decided_at is None or row.decided_by is None:
        return None
    return Decision(
        row.id, kind, row.decided_by, row.claim_token, as_utc(row.decided_at),
        row.corrected_answer, row.reject_reason,
    )  # fmt: skip


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


def vote_of(row: ReviewVote) -> Vote:
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
        .where(*holds(order.item_id, order.token, order.reviewer, order.at))
        .values(
            state=DECIDED_STATE[order.kind].value, decided_at=order.at, decided_by=order.reviewer,
            lease_until=None, **values, **extra,
        )
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    if rowcount(result) == 1:
        session.add(
            ReviewDecision(
                item_id=order.item_id, at=order.at, reviewer=order.reviewer,
                kind=order.kind.value, claim_token=order.token, payload=history,
            )
        )  # fmt: skip
    return rowcount(result)


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
        first = vote_of(
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
        .where(*holds(order.item_id, order.token, order.reviewer, order.at))
        .values(state=state.value, votes=seq, claimed_by=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
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
        vote = vote_of(cast_vote)
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
OnDecided = Callable[[AsyncSession, Decision], Awaitable[None]]


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
            *holds(item_id, token, reviewer, now)
        )
        if await is_postgres(session):
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
