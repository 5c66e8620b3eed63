"""Claims on review items: a lease with a fencing token, heartbeats, leases that run out, and
unparking.

An item is ``pending`` until a reviewer claims it. A claim sets a lease (``lease_until``) and
bumps ``claim_token``, the fencing token: every later heartbeat or decision must carry it, so a
reviewer whose lease ran out (and whose item someone else has since claimed) is refused with
``StaleClaim`` instead of overwriting the newer claimant's work.

A lease that has run out returns its item to ``pending`` the next time anyone claims (counted in
``expiries``, with an ``expired`` history row); the item whose expiries reach the limit is
``parked`` for a person to look at instead of being handed out again, until someone unparks it.

How a claim stays atomic:

- PostgreSQL: ``UPDATE review_items SET ... WHERE id = (SELECT id ... ORDER BY priority DESC,
  created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ...``: concurrent claimers skip the rows
  another transaction holds instead of queueing behind it. When every candidate was held (by
  claimers, or by another writer for a moment), the claim looks again a few times, briefly, and
  answers "nothing" only when no candidate is left.
- SQLite: the same single ``UPDATE ... RETURNING`` (without the locking clause) inside a
  transaction opened with ``BEGIN IMMEDIATE``, which takes the database's write lock up front.
  Writers are serialised; a waiting writer is bounded by the busy timeout (``db.session``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import as_utc, require_utc
from service.db.models import ReviewDecision, ReviewItem, ReviewVote
from service.review.model import (
    EXPIRED,
    PARKED,
    UNPARKED,
    ClaimedItem,
    ItemNotFound,
    ItemState,
    NotParked,
    Scope,
    StaleClaim,
)
from service.review.queue import (
    claim_order,
    is_postgres,
    item_view,
    rowcount,
    scope_clauses,
    write_transaction,
)
from service.review.sla import SlaTargets

DEFAULT_MAX_EXPIRIES = 3
# A claim that found every candidate held by another transaction looks again, at most this often
# (waiting 0.05, 0.1, ... s between looks: 1.4 s in all).
CLAIM_ATTEMPTS = 8
CLAIM_RETRY_S = 0.05
# Expired leases released per claim at most (there are about as many as reviewers at work).
RELEASE_BATCH = 100


async def _release_expired(session: AsyncSession, now: datetime, max_expiries: int) -> int:
    """Return items whose lease ran out to ``pending`` (or ``parked``); inside a claim."""
    query = (
        select(
            ReviewItem.id, ReviewItem.claim_token, ReviewItem.claimed_by, ReviewItem.lease_until,
            ReviewItem.expiries, ReviewItem.votes, ReviewItem.reviews_needed,
        )
        .where(ReviewItem.state == ItemState.CLAIMED.value, ReviewItem.lease_until < now)
        .order_by(*claim_order())
        .limit(RELEASE_BATCH)
    )  # fmt: skip
    if await is_postgres(session):
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
        if rowcount(result) != 1:
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
    pick = select(ReviewItem.id).where(ReviewItem.state.in_(states), _not_voted_by(reviewer))
    wanted = Scope(route=route, reason=reason) if scope is None else scope
    if scope is not None and (route is not None or reason is not None):
        wanted = Scope(scope.routes, scope.tiers, route, reason, scope.tier)
    for clause in scope_clauses(wanted):
        pick = pick.where(clause)
    order = claim_order(sla, now)
    if adjudicator:
        order = (case((ReviewItem.state == ItemState.DISPUTED.value, 0), else_=1), *order)
    claim = (
        update(ReviewItem)
        .values(
            state=ItemState.CLAIMED.value,
            claimed_by=reviewer,
            lease_until=lease_until,
            claim_token=ReviewItem.claim_token + 1,
        )
        .returning(*ReviewItem.__table__.columns)
        .execution_options(synchronize_session=False)
    )
    for attempt in range(1, CLAIM_ATTEMPTS + 1):
        async with write_transaction(sessions) as session:
            await _release_expired(session, now, max_expiries)
            postgres = await is_postgres(session)
            first = pick.order_by(*order).limit(1)
            if postgres:
                first = first.with_for_update(skip_locked=True)
            chosen = claim.where(
                ReviewItem.id == first.scalar_subquery(), ReviewItem.state.in_(states)
            )
            row = (await session.execute(chosen)).one_or_none()
            # PostgreSQL skipped every candidate another transaction held. A claimer's rows are
            # gone once it commits; a row another writer holds for a moment (the SLA stamp in
            # stats.py) is still claimable: look again shortly rather than answer "nothing".
            held = row is None and postgres and bool(await session.scalar(select(exists(pick))))
        if not held or attempt == CLAIM_ATTEMPTS:
            break
        await asyncio.sleep(CLAIM_RETRY_S * attempt)
    if row is None:
        return None
    item = item_view(row)
    return ClaimedItem(item, item.claim_token, lease_until)


async def _missing_or_stale(session: AsyncSession, item_id: str) -> Exception:
    found = await session.scalar(select(ReviewItem.id).where(ReviewItem.id == item_id))
    return ItemNotFound(item_id) if found is None else StaleClaim(item_id)


def holds(item_id: str, token: int, reviewer: str, now: datetime) -> tuple[Any, ...]:
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
            .where(*holds(item_id, token, reviewer, now))
            .values(lease_until=lease_until)
            .execution_options(synchronize_session=False)
        )
        if rowcount(result) != 1:
            raise await _missing_or_stale(session, item_id)
    return lease_until


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
        if await is_postgres(session):
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
        if rowcount(result) != 1:  # cannot happen under the row lock / write lock
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
