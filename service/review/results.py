"""What a client whose answer was held for review reads back, and the callback that posts it.

A held answer's result is ``pending`` until a reviewer decides: then ``approved`` (the model's
answer), ``corrected`` (the reviewer's) or ``rejected`` (no answer, a reason). A parked item is
still ``pending`` for the client. Only the key that made the request reads its result (an admin
reads any: ``result_for`` with no key). Callbacks go only to URLs under an allow-listed prefix
(same scheme, host and port, path segment by segment, no userinfo or dot segments), with a short
timeout and no redirects, from a durable outbox: a failed try is recorded and retried with
backoff (also after a restart) until a 2xx answer or the last try; the result stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.clock import Clock, now
from service.db.models import RequestRecord
from service.review import outbox, queue

log = logging.getLogger(__name__)
CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=10)
FINAL = {"approved", "corrected", "rejected"}
DEFAULT_PORTS = {"http": 80, "https": 443}


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
    item = await queue.get(session, review_id)
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
            raise queue.ItemNotFound(review_id)
    return result


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a URL really goes: scheme, host, port and path segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def within(self, prefix: _Place) -> bool:
        origin = (self.scheme, self.host, self.port)
        if origin != (prefix.scheme, prefix.host, prefix.port):
            return False
        wanted = prefix.segments[:-1] if prefix.segments[-1:] == ("",) else prefix.segments
        return self.segments[: len(wanted)] == wanted


# Encoded '.', '/' and '\' let a path read differently once a server decodes it.
_ENCODED_PATH_CHARS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def _place(url: str) -> _Place | None:
    """The URL's place, or None for anything a string prefix could be fooled by: another
    scheme, userinfo (`http://allowed@elsewhere/`), a bad port, or a path with dot segments,
    backslashes or encoded dots and slashes (`/hooks/../admin`, `/hooks/%2e%2e/admin`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    path = parts.path or "/"
    segments = tuple(path.split("/")[1:])
    if "\\" in path or _ENCODED_PATH_CHARS.search(path) or {".", ".."} & set(segments):
        return None
    return _Place(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], segments)


def allowed(url: str, allowlist: Sequence[str]) -> bool:
    """Whether a callback may go to ``url``: same scheme, host and port as an allow-listed
    prefix, and a path under the prefix's path, segment by segment (`/hooks/` allows
    `/hooks/review`, `/hooks/review` allows `/hooks/review/7` but not `/hooks/reviewer`)."""
    place = _place(url)
    return place is not None and any(
        prefix is not None and place.within(prefix) for prefix in map(_place, allowlist)
    )


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
        self._allowlist = tuple(allowlist)
        self._backoff = backoff
        self._poll_s = poll_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    def attach(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def enqueue(self, session: AsyncSession, review_id: str, at: datetime) -> None:
        """In a decision's transaction: queue its callback if the item's route names one."""
        item = await queue.get(session, review_id)
        if item.state not in FINAL:
            return
        url = self._callback_url(item.route)
        if url is None:
            return
        if not allowed(url, self._allowlist):
            log.warning("review callback to %s not queued: not in the allow-list", url)
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
