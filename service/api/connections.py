"""Client connections with time limits and a cap: what ``loragate serve`` gives uvicorn.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but has no limit on a new
connection that sends nothing or drips its headers, on a body that never ends, or on a client
that stops reading its stream; and ``limit_concurrency`` answers 503 only once a request's
headers are in, while the connection itself holds a file descriptor. Measured before this:
a connection sending nothing stayed open 80 s and more, 20,000 of them exhausted the
open-files limit and failed the health probes, and 50 streaming clients that never read kept
their streams (and engine slots) forever. This protocol adds, per connection:

- a header timeout: the request line and headers must be in within ``client_header_timeout_s``
  of the connection opening or the previous response ending;
- a body timeout: the whole body within ``client_body_timeout_s`` of the headers;
- a send timeout: a client that takes none of the bytes waiting for it for ``send_timeout_s``
  is cut (the request sees a disconnect: a stream is recorded as 499 and its engine call
  cancelled);
- a cap: a connection past ``max_connections`` open ones is closed at once;
- a size limit on the request line and headers (``MAX_HEADER_BYTES``; httptools has none: 2 MB
  of headers were accepted): past it the answer is 400 and the connection is closed.

Each time limit closes the connection without an answer, as nginx does with its own: nothing
was asked, or the client is not listening. Each close is logged with the client's address and
the reason, and counted (``closed``: ``loragate_client_connections_closed_total{reason}``), so a
client that reports "server disconnected" can be told from a gateway fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024


class HeadersTooLarge(Exception):
    """Raised in a parser callback: httptools turns it into a parse error, which uvicorn
    answers with 400 and a closed connection."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int
    closed: Callable[[str], None] | None = None  # told each reason a connection is closed for


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``limits`` is set by ``protocol``."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: asyncio.TimerHandle | None = None  # header or body deadline
        self._sending: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning("connection refused: %d open connections", len(self.connections) - 1)
            self._count("over_cap")
            self.transport.abort()
            return
        self._read_within(self.limits.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop(self._reading)
        self._stop(self._sending)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            raise HeadersTooLarge(f"request line and headers over {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._read_within(self.limits.body_timeout_s, "body_timeout")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop(self._reading)
        self._reading = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request: its headers are due (the keep-alive timeout closes a
        # connection that sends nothing at all sooner). A pipelined request already started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._read_within(self.limits.header_timeout_s, "header_timeout")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._sending is None:
            self._sending = self.loop.call_later(
                self.limits.send_timeout_s, self._cut, "send_timeout", self.limits.send_timeout_s
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop(self._sending)
        self._sending = None

    def _read_within(self, seconds: float, reason: str) -> None:
        self._stop(self._reading)
        self._reading = self.loop.call_later(seconds, self._cut, reason, seconds)

    def _cut(self, reason: str, seconds: float) -> None:
        # abort, not close: close would wait to flush what the client is not reading.
        if not self.transport.is_closing():
            host, port = self.client or ("-", 0)
            log.info("closed the connection of %s:%s: %s (%g s)", host, port, reason, seconds)
            self._count(reason)
            self.transport.abort()

    def _count(self, reason: str) -> None:
        if self.limits.closed is not None:
            self.limits.closed(reason)

    @staticmethod
    def _stop(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def protocol(limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn (``http=``), carrying these limits."""

    class LimitedHttp(LimitedHttpProtocol):
        pass

    LimitedHttp.limits = limits
    return LimitedHttp
