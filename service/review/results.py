"""What a client whose answer was held for review reads back, and the callback that posts it.

A held answer's result is ``pending`` until a reviewer decides: then ``approved`` (the model's
answer), ``corrected`` (the reviewer's) or ``rejected`` (no answer, a reason). A parked item is
still ``pending`` for the client. Only the key that made the request reads its result (an admin
reads any: ``result_for`` with no key). Callbacks go only to URLs under an allow-listed prefix
(same scheme, host and port, path segment by segment, nothing a server could read another way:
``callback_urls``), with a short timeout and no redirects, from a durable outbox: a failed try
is recorded and retried with backoff (also after a restart) until a 2xx answer or the last try;
the result stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import Clock, now
from service.db.models import RequestRecord
from service.review import outbox, reads
from service.review.callback_urls import allowlist_places, refusal
from service.review.model import ItemNotFound

log = logging.getLogger(__name__)
CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=10)
FINAL = {"approved", "corrected", "rejected"}


class ReviewResult(BaseModel):
    review_id: str
    request_id: str
    status: Literal["pending", "approved", "corrected", "rejected"] = Field(
        description="`pending` until a reviewer decides."
    )
    answer: str | None = Field(
        description="The answer to use: the model's if approved, the reviewer's if corrected."
    )
    reject_reason: str | None = None
    decided_at: datetime | None = None


async def result_of(session: AsyncSession, review_id: str) -> tuple[ReviewResult, str]:
    """The result of a review item and the route it belongs to (``ItemNotFound`` if none)."""
    item = await reads.get(session, review_id)
    status = item.state if item.state in FINAL else "pending"
    answer = {"approved": item.answer, "corrected": item.corrected_answer}.get(status)
    result = ReviewResult(
        review_id=item.id, request_id=item.request_id, status=status,  # type: ignore[arg-type]
        answer=answer, reject_reason=item.reject_reason, decided_at=item.decided_at,
    )  # fmt: skip
    return result, item.route


async def result_for(session: AsyncSession, review_id: str, key_id: str | None) -> ReviewResult:
    """The result, if its request was made with key ``key_id`` (``None``: whoever made it);
    ``ItemNotFound`` otherwise, so another key's reviews look like none at all."""
    result, _ = await result_of(session, review_id)
    if key_id is not None:
        owner = await session.scalar(
            select(RequestRecord.key_id).where(RequestRecord.id == result.request_id)
        )
        if owner != key_id:
            raise ItemNotFound(review_id)
    return result


class ReviewCallbacks:
    """Posts decisions of held answers to the route's callback URL from the durable outbox
    (``service.review.outbox``): queued in the decision's transaction, retried with backoff,
    every try recorded; what is due when a gateway starts is sent by it."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        callback_url: Callable[[str], str | None],
        allowlist: Sequence[str],
        backoff: outbox.Backoff,
        poll_s: float,
        clock: Clock = now,
    ) -> None:
        self._sessions = sessions
        self._callback_url = callback_url  # route name -> its hold callback, if any
        self._allowlist = allowlist_places(allowlist)  # a refused entry stops the start
        self._backoff = backoff
        self._poll_s = poll_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    def attach(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def enqueue(self, session: AsyncSession, review_id: str, at: datetime) -> None:
        """In a decision's transaction: queue its callback if the item's route names one."""
        item = await reads.get(session, review_id)
        if item.state not in FINAL:
            return
        url = self._callback_url(item.route)
        if url is None:
            return
        why = refusal(url, self._allowlist)
        if why is not None:
            log.warning("review callback to %s not queued: %s", url, why)
            return
        await outbox.add(session, review_id, url, at)

    def decided(self, review_id: str) -> None:
        """Called after a decision is committed: look at the outbox now."""
        self._wake.set()

    async def run(self) -> None:
        """Send what is due, then wait for a decision or the next poll; forever."""
        while True:
            try:
                await self.deliver_due()
            except (SQLAlchemyError, OSError):
                # The database is away: the outbox keeps everything; the next round tries again.
                log.exception("review callback outbox round failed")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the event is set, and the gateway's shutdown would wait on this loop forever.
            with contextlib.suppress(TimeoutError):  # a poll: look again for due retries
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()

    async def deliver_due(self) -> None:
        for callback in await outbox.take_due(self._sessions, self._clock()):
            attempt = await self._post(callback)
            state = await outbox.record_attempt(self._sessions, callback, attempt, self._backoff)
            if state is outbox.CallbackState.FAILED:
                log.warning(
                    "review callback %d to %s given up after %d tries",
                    callback.id, callback.url, callback.attempts + 1,
                )  # fmt: skip

    async def _post(self, callback: outbox.DueCallback) -> outbox.Attempt:
        if self._http is None:
            raise RuntimeError("ReviewCallbacks used before the app started")
        async with self._sessions() as session:
            result, _route = await result_of(session, callback.review_id)
        try:
            # Never redirected: a redirect would leave the allow-listed place.
            async with self._http.post(
                callback.url, json=result.model_dump(mode="json"), timeout=CALLBACK_TIMEOUT,
                allow_redirects=False,
            ) as response:  # fmt: skip
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("review callback to %s failed: %r", callback.url, exc)
            return outbox.Attempt(self._clock(), None, repr(exc)[:500])
        if status >= 300:
            log.warning("review callback to %s answered %d", callback.url, status)
        return outbox.Attempt(self._clock(), status, None)

    async def close(self) -> None:
        """Nothing to wait for: what is not delivered stays in the outbox for the next start."""
