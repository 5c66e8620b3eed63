"""Client-disconnect handling: an upstream call or a relayed stream stops when the client goes.

Starlette's own StreamingResponse only notices a gone client at the next write (ASGI 2.4); a
generation can run for minutes between writes, so both helpers listen for ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import ClientClosedRequest

T = TypeVar("T")
log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Watch:
    __slots__ = ("finished", "gone")

    def __init__(self) -> None:
        self.finished = False
        self.gone = False


async def _cancel_on_disconnect(
    receive: Receive, handler: asyncio.Task[Any], watch: _Watch
) -> None:
    await wait_for_disconnect(receive)
    # `finished` is set in the handler's own step, so a cancel can only land on the await below.
    if not watch.finished:
        watch.gone = True
        handler.cancel()


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientClosedRequest.

    One watcher task per request (cheaper than running ``work`` as a task of its own): on
    ``http.disconnect`` it cancels the handler's task while the handler waits on ``work``.
    """
    handler = asyncio.current_task()
    assert handler is not None
    watch = _Watch()
    watcher = asyncio.create_task(_cancel_on_disconnect(receive, handler, watch))
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone:
            handler.uncancel()
            raise ClientClosedRequest("The client closed the connection.") from None
        raise
    finally:
        watch.finished = True
        watcher.cancel()


class Relayed(Protocol):
    """A stream to relay: its SSE bytes, and what ends it however the response ended."""

    def chunks(self) -> AsyncGenerator[bytes, None]: ...

    def close(self) -> None: ...


class RelayResponse(Response):
    """Sends a relayed stream's SSE bytes; cancels it as soon as the client disconnects."""

    def __init__(
        self, relayed: Relayed, request_id: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status_code=200)
        self._relayed = relayed
        self._chunks = relayed.chunks()
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self._sse_headers = [*SSE_HEADERS, (b"x-request-id", request_id.encode()), *extra]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        pumping = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((pumping, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pumping.done():
                pumping.cancel()
                await asyncio.wait((pumping,))
            # Runs the generator's own cleanup (record written, upstream closed); `close` covers
            # a generator that never started, whose `finally` does not run.
            await self._chunks.aclose()
            self._relayed.close()
        failure = None if pumping.cancelled() else pumping.exception()
        # OSError: the client went away between two writes; the generator already recorded it.
        if failure is not None and not isinstance(failure, OSError):
            raise failure
