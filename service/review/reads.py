"""Reading the review queue: one item, a page of items in queue order, an item's votes and
history, and the queue's figures (depth, live claims, oldest waiting age, parked count,
decisions per adapter version)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import as_utc, require_utc
from service.db.models import ReviewDecision, ReviewItem, ReviewVote
from service.review.decisions import vote_of
from service.review.model import (
    EVERYTHING,
    HistoryEntry,
    ItemNotFound,
    ItemState,
    QueueStats,
    ReviewItemView,
    Scope,
    Vote,
)
from service.review.queue import claim_order, item_view, scope_clauses
from service.review.sla import SlaTargets


async def get(session: AsyncSession, item_id: str) -> ReviewItemView:
    row = await session.get(ReviewItem, item_id, populate_existing=True)
    if row is None:
        raise ItemNotFound(item_id)
    return item_view(row)


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
    for clause in scope_clauses(scope or Scope()):
        query = query.where(clause)
    order = claim_order(sla, require_utc(now) if now is not None else None)
    query = query.order_by(*order).limit(limit).offset(offset)
    return [item_view(row) for row in await session.scalars(query)]


async def votes(session: AsyncSession, item_id: str) -> list[Vote]:
    """The independent decisions on an item so far, in the order they came."""
    query = select(ReviewVote).where(ReviewVote.item_id == item_id).order_by(ReviewVote.seq)
    return [vote_of(row) for row in await session.scalars(query)]


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
        .where(state.in_(open_states), *scope_clauses(scope))
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
        select(func.min(ReviewItem.created_at)).where(waiting, *scope_clauses(scope))
    )
    parked = await session.scalar(
        select(func.count())
        .select_from(ReviewItem)
        .where(state == ItemState.PARKED.value, *scope_clauses(scope))
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
