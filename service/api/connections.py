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
- caps that shed idle connections first: past ``max_per_client`` connections from one address,
  that address's oldest idle connection is closed; past ``max_connections`` in all, the oldest
  idle one of anyone's. Only when none is idle is the new connection itself closed at once, so
  a flood of sockets that send nothing cannot keep out a client that sends requests (measured
  before: 1,000 idle sockets refused 20 of 20 normal requests, for 10 s a wave);
- a bound on pipelining: a connection with ``max_pipelined`` requests queued behind the one
  being answered, that sends one more, is cut (answers it does not read kept every queued
  request in memory: 20 such connections took 160 MB);
- a body not read is not waited for: a connection whose answer went out before its request
  body was in (an early 401 or 413, or an endpoint that takes no body) is closed once the
  answer is sent, so nothing more of that body is read (before: 4.9 GB accepted in 4 s after
  a 401 on the inference endpoint);
- a size limit on the request line and headers (``MAX_HEADER_BYTES``; httptools has none: 2 MB
  of headers were accepted): past it the answer is 400 and the connection is closed.

Each time limit closes the connection without an answer, as nginx does with its own: nothing
was asked, or the client is not listening. Each close is logged with the client's address and
the reason, and counted (``closed``: ``loragate_client_connections_closed_total{reason}``), so a
client that reports "server disconnected" can be told from a gateway fault.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024


class HeadersTooLarge(Exception):
    """Raised in a parser callback: httptools turns it into a parse error, which uvicorn
    answers with 400 and a closed connection."""


class PipelineFull(Exception):
    """Raised in a parser callback to stop parsing the rest of what a client sent; the
    connection is cut instead of answered (its earlier answers are still due)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int
    max_per_client: int = 0  # connections from one address; 0: no cap of its own
    max_pipelined: int = 16  # requests queued behind the one being answered
    closed: Callable[[str], None] | None = None  # told each reason a connection is closed for


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``limits`` is set by ``protocol``."""

    limits: ClassVar[ConnectionLimits]
    per_client: ClassVar[Counter[str]]  # open connections by client address, of this server
    # Orders connections by when they went idle: the loop's clock is read once per turn, so
    # connections accepted in one turn would tie.
    idle_order: ClassVar[Iterator[int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: asyncio.TimerHandle | None = None  # header or body deadline
        self._sending: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._host = ""
        self._counted = False
        self._idle_since: int | None = None  # None while a request is in progress
        self._pipeline_full = False
        self._answering: Any = None  # the request whose answer is being sent

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._host = self.client[0] if self.client else ""
        self.per_client[self._host] += 1
        self._counted = True
        self._idle_since = next(self.idle_order)
        if not self._make_room():
            return
        self._read_within(self.limits.header_timeout_s, "header_timeout")

    def _make_room(self) -> bool:
        """Under both caps, by closing the oldest idle connection past one; False when none
        was idle and this one was refused."""
        cap = self.limits.max_per_client
        if cap and self.per_client[self._host] > cap:
            same = (c for c in self.connections if getattr(c, "_host", None) == self._host)
            if not self._shed(same, "client_cap"):
                self._refuse("over_client_cap")
                return False
        over = len(self.connections) > self.limits.max_connections
        if over and not self._shed(self.connections, "cap"):
            self._refuse("over_cap")
            return False
        return True

    def _shed(self, candidates: Iterable[object], cap: str) -> bool:
        idle = [
            c for c in candidates
            if isinstance(c, LimitedHttpProtocol) and c is not self and c._idle_since is not None
        ]  # fmt: skip
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since or 0)
        oldest._drop(f"shed_idle_{cap}")
        return True

    def _refuse(self, reason: str) -> None:
        log.warning(
            "connection of %s refused (%s): none of the open ones is idle", self._host, reason
        )
        self._drop(reason)

    def _drop(self, reason: str) -> None:
        self._count(reason)
        self._forget()
        self._abort()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._answering = cycle  # with pipelining, not the newest parsed (``self.cycle``)
        super()._start_asgi_task(cycle, app)

    def _abort(self) -> None:
        # The transport reports its loss a loop turn later, and then only to the newest parsed
        # request; the one being answered must see the disconnect now, or its next write fails
        # on the closed transport ("the handler is closed").
        for cycle in (self._answering, self.cycle, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self.transport.abort()

    def _forget(self) -> None:
        """Out of the caps' counts now (the transport reports its loss a loop turn later)."""
        self.connections.discard(self)
        if self._counted:
            self._counted = False
            self.per_client[self._host] -= 1
            if self.per_client[self._host] <= 0:
                del self.per_client[self._host]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop(self._reading)
        self._stop(self._sending)
        self._forget()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= self.limits.max_pipelined:
            self._pipeline_full = True
            raise PipelineFull(f"more than {self.limits.max_pipelined} requests queued")
        super().on_message_begin()
        self._head_bytes = 0
        self._idle_since = None

    def send_400_response(self, msg: str) -> None:
        if self._pipeline_full:  # not a malformed request: answers are still owed before it
            log.info("cut the connection of %s: pipelined requests not read", self._host)
            self._drop("pipeline_full")
            return
        super().send_400_response(msg)

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
        if not self.pipeline and self.cycle.more_body and not self.transport.is_closing():
            # Answered before its body was in: stop reading it (the close flushes the answer).
            self._count("body_unread")
            self.transport.close()
        super().on_response_complete()
        # Waiting for the next request: its headers are due (the keep-alive timeout closes a
        # connection that sends nothing at all sooner). A pipelined request already started.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._idle_since = next(self.idle_order)
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
            self._abort()

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
    LimitedHttp.per_client = Counter()
    LimitedHttp.idle_order = itertools.count()
    return LimitedHttp
