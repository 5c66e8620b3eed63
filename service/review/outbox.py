"""The durable outbox of review callbacks: a row per callback, written in its decision's
transaction, taken by one gateway at a time when due, every try recorded.

A gateway takes a due callback by moving its ``next_at`` past a lease in one guarded update,
so two gateways never post the same try; a gateway that dies holding one leaves it due again
when the lease ends. Delivery is at least once: a receiver may see a result twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import as_utc
from service.db.models import ReviewCallback, ReviewCallbackAttempt
from service.review.queue import write_transaction

# How long a gateway may hold a callback it took before another may take it: longer than one
# try (10 s at most, ``results.CALLBACK_TIMEOUT``), short enough that a gateway killed during
# a try delays the next one little.
TAKE_LEASE_S = 15.0


class CallbackState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after the last try


@dataclass(frozen=True, slots=True)
class DueCallback:
    id: int
    review_id: str
    url: str
    attempts: int  # tries made before this one


@dataclass(frozen=True, slots=True)
class Attempt:
    at: datetime
    status: int | None  # the HTTP status, None when no answer came
    error: str | None


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float
    max_s: float
    attempts: int

    def wait_s(self, tries: int) -> float:
        """The wait after ``tries`` failed tries: ``first_s``, doubling, at most ``max_s``."""
        return float(min(self.max_s, self.first_s * 2 ** max(0, tries - 1)))


async def add(session: AsyncSession, review_id: str, url: str, now: datetime) -> None:
    """Queue a callback in the caller's transaction (the decision's), due at once."""
    session.add(
        ReviewCallback(
            review_id=review_id, url=url, state=CallbackState.PENDING.value, attempts=0,
            next_at=now, created_at=now,
        )
    )  # fmt: skip


async def take_due(
    sessions: async_sessionmaker[AsyncSession], now: datetime, limit: int = 20
) -> list[DueCallback]:
    """Callbacks due now, each taken for ``TAKE_LEASE_S`` (none another gateway took)."""
    async with write_transaction(sessions) as session:
        rows = (
            await session.execute(
                select(
                    ReviewCallback.id,
                    ReviewCallback.review_id,
                    ReviewCallback.url,
                    ReviewCallback.attempts,
                    ReviewCallback.next_at,
                )
                .where(
                    ReviewCallback.state == CallbackState.PENDING.value,
                    ReviewCallback.next_at <= now,
                )
                .order_by(ReviewCallback.next_at)
                .limit(limit)
            )
        ).all()
        taken = []
        lease = now + timedelta(seconds=TAKE_LEASE_S)
        for row in rows:
            result: Any = await session.execute(
                update(ReviewCallback)
                .where(ReviewCallback.id == row.id, ReviewCallback.next_at == row.next_at)
                .values(next_at=lease)
            )
            if result.rowcount == 1:
                taken.append(DueCallback(row.id, row.review_id, row.url, row.attempts))
        return taken


async def record_attempt(
    sessions: async_sessionmaker[AsyncSession],
    callback: DueCallback,
    attempt: Attempt,
    backoff: Backoff,
) -> CallbackState:
    """Record a try and what follows: delivered (a 2xx), another try later, or given up."""
    tries = callback.attempts + 1
    delivered = attempt.status is not None and 200 <= attempt.status < 300
    if delivered:
        state = CallbackState.DELIVERED
    elif tries >= backoff.attempts:
        state = CallbackState.FAILED
    else:
        state = CallbackState.PENDING
    next_at = attempt.at + timedelta(seconds=backoff.wait_s(tries))
    async with write_transaction(sessions) as session:
        session.add(
            ReviewCallbackAttempt(
                callback_id=callback.id, at=attempt.at, status=attempt.status,
                error=attempt.error,
            )
        )  # fmt: skip
        await session.execute(
            update(ReviewCallback)
            .where(ReviewCallback.id == callback.id)
            .values(state=state.value, attempts=tries, next_at=next_at)
        )
    return state


@dataclass(frozen=True, slots=True)
class CallbackView:
    id: int
    review_id: str
    url: str
    state: str
    attempts: list[Attempt]
    next_at: datetime


async def callbacks_of(session: AsyncSession, review_id: str) -> list[CallbackView]:
    """A review item's callbacks with their tries, oldest first."""
    rows = (
        await session.scalars(
            select(ReviewCallback)
            .where(ReviewCallback.review_id == review_id)
            .order_by(ReviewCallback.id)
        )
    ).all()
    views = []
    for row in rows:
        tries = (
            await session.scalars(
                select(ReviewCallbackAttempt)
                .where(ReviewCallbackAttempt.callback_id == row.id)
                .order_by(ReviewCallbackAttempt.id)
            )
        ).all()
        attempts = [Attempt(as_utc(t.at), t.status, t.error) for t in tries]
        views.append(
            CallbackView(row.id, row.review_id, row.url, row.state, attempts, as_utc(row.next_at))
        )
    return views
