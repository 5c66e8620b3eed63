"""Upstream calls to vLLM over aiohttp (the hot path), with one retry before the first byte.

Failure classes map to the error tree: connect failures and 5xx are retried once on another
replica of the pool (and eject the failing one); a timeout ejects but is not retried (its time
budget is spent); a 4xx is the engine refusing the request and goes back to the client as 400.
Nothing is retried once a byte has reached the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import aiohttp
import orjson

from monitoring.metrics import Metrics
from monitoring.tracing import with_trace_context
from service.engine.pool import EnginePool, Replica
from service.errors import (
    EngineBadResponse,
    EngineConnectFailed,
    EngineError,
    EngineRejected,
    EngineServerError,
    EngineStreamBroken,
    EngineTimeout,
    EngineUnavailable,
)
from service.settings import Settings

T = TypeVar("T")
JSON_HEADERS = {"Content-Type": "application/json"}
MAX_ENGINE_MESSAGE = 500


@dataclass(slots=True)
class Attempted(Generic[T]):
    """What a call gave, the replica that gave it, and how many replicas were tried."""

    value: T
    replica: Replica
    attempts: int


MAX_SSE_LINE = 1024 * 1024


@dataclass(slots=True)
class EngineStream:
    """An open streaming response; iterate ``lines()`` and always ``close()``."""

    response: aiohttp.ClientResponse
    replica: Replica
    attempts: int
    pool: EnginePool
    target: str
    first_byte_timeout_s: float
    idle_timeout_s: float
    _closed: bool = field(default=False)

    async def lines(self) -> AsyncIterator[bytes]:
        """Non-empty SSE lines; raises EngineTimeout / EngineStreamBroken on failure.

        Reads whatever has arrived (usually one whole event with its blank line) under one
        timeout, rather than line by line: a timeout costs about 10 us of CPU, which per line
        was most of a streamed answer's relay cost."""
        timeout = self.first_byte_timeout_s
        content = self.response.content
        partial = b""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await content.readany()
            except TimeoutError as exc:
                self.pool.eject(self.replica, "stream stalled")
                raise EngineTimeout(
                    f"The engine sent nothing for {timeout:g}s in the middle of the stream."
                ) from exc
            except aiohttp.ClientError as exc:
                raise EngineStreamBroken("The engine connection broke during the stream.") from exc
            if not data:
                if partial.strip():
                    yield partial.strip()
                return
            timeout = self.idle_timeout_s
            *complete, partial = (partial + data).split(b"\n")
            if len(partial) > MAX_SSE_LINE:
                raise EngineBadResponse("The engine sent a stream line longer than 1 MiB.")
            for line in complete:
                line = line.rstrip(b"\r")
                if line:
                    yield line

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            # Closing (not releasing) drops the connection, which makes vLLM abort the request.
            self.response.close()
            self.pool.release(self.replica, self.target)


class EngineClient:
    def __init__(self, pools: dict[str, EnginePool], metrics: Metrics, settings: Settings) -> None:
        self._http: aiohttp.ClientSession | None = None
        self.pools = pools
        self._metrics = metrics
        self._first_byte_s = settings.first_byte_timeout_s
        self._idle_s = settings.idle_timeout_s
        # Non-streaming: vLLM sends headers only when the whole answer is ready.
        self._unary_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=self._first_byte_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=None
        )

    def attach(self, http: aiohttp.ClientSession) -> None:
        """Use this session (created on the serving event loop, in the app's lifespan)."""
        self._http = http

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("EngineClient used before the app started")
        return self._http

    def pool(self, name: str) -> EnginePool:
        pool = self.pools.get(name)
        if pool is None:
            raise EngineUnavailable(f"No engine pool named '{name}' is configured.")
        return pool

    def complete(
        self, pool_name: str, target: str, path: str, body: bytes, request_id: str
    ) -> Awaitable[Attempted[bytes]]:
        """The engine's whole answer (status < 400)."""
        return self._with_retry(
            pool_name, target, self._post_unary, path, body, request_id, hold=False
        )

    async def open_stream(
        self, pool_name: str, target: str, path: str, body: bytes, request_id: str
    ) -> EngineStream:
        """Headers received with status 200; the replica stays acquired until ``close()``."""
        opened = await self._with_retry(
            pool_name, target, self._post_stream, path, body, request_id, hold=True
        )
        return EngineStream(
            opened.value, opened.replica, opened.attempts, self.pools[pool_name], target,
            self._first_byte_s, self._idle_s,
        )  # fmt: skip

    async def _with_retry(
        self,
        pool_name: str,
        target: str,
        post: Callable[[EnginePool, Replica, str, bytes, str], Awaitable[T]],
        path: str,
        body: bytes,
        request_id: str,
        *,
        hold: bool,
    ) -> Attempted[T]:
        """``post`` on the least busy replica; once more on another one if it may be retried.

        The replica is released when ``post`` returns, or on success kept when ``hold`` is set
        (an open stream releases it on close). One coroutine frame for the whole retry loop:
        every frame is passed again on each resume of an await inside.
        """
        pool = self.pool(pool_name)
        tried: list[Replica] = []
        while True:
            replica = self._next_replica(pool, target, tried)
            pool.acquire(replica, target)
            try:
                value = await post(pool, replica, path, body, request_id)
            except EngineError as exc:
                pool.release(replica, target)
                if not self._may_retry(pool, target, exc, tried):
                    exc.replica, exc.attempts = replica.url, len(tried)
                    raise
                continue
            except BaseException:
                pool.release(replica, target)
                raise
            if not hold:
                pool.release(replica, target)
            return Attempted(value, replica, len(tried))

    def _next_replica(self, pool: EnginePool, target: str, tried: list[Replica]) -> Replica:
        replica = pool.choose(exclude=tried, target=target)
        if replica is None:
            what = "" if target == pool.base_model else f" serving '{target}'"
            raise EngineUnavailable(
                f"No healthy engine replica{what} in pool '{pool.name}'; try again shortly."
            )
        tried.append(replica)
        return replica

    def _may_retry(
        self, pool: EnginePool, target: str, exc: EngineError, tried: list[Replica]
    ) -> bool:
        if not exc.retryable or len(tried) >= 2 or pool.choose(tried, target) is None:
            return False
        self._metrics.upstream_retries.labels(pool.name).inc()
        return True

    async def _post_unary(
        self, pool: EnginePool, replica: Replica, path: str, body: bytes, request_id: str
    ) -> bytes:
        try:
            async with self.http.post(
                replica.url + path,
                data=body,
                headers=with_trace_context({**JSON_HEADERS, "X-Request-Id": request_id}),
                timeout=self._unary_timeout,
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(pool, replica, exc) from exc
        self._check_status(pool, replica, status, payload)
        return payload

    async def _post_stream(
        self, pool: EnginePool, replica: Replica, path: str, body: bytes, request_id: str
    ) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self._first_byte_s):
                response = await self.http.post(
                    replica.url + path,
                    data=body,
                    headers=with_trace_context({**JSON_HEADERS, "X-Request-Id": request_id}),
                    timeout=self._stream_timeout,
                )
                if response.status != 200:
                    payload = await response.read()
                    response.release()
                    self._check_status(pool, replica, response.status, payload)
                if not response.content_type.startswith("text/event-stream"):
                    response.close()
                    raise EngineBadResponse("The engine did not answer with an event stream.")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(pool, replica, exc) from exc
        return response

    def _transport_error(
        self, pool: EnginePool, replica: Replica, exc: aiohttp.ClientError | TimeoutError
    ) -> EngineError:
        """Map a transport failure to the error tree and eject the replica."""
        error: EngineError
        if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
            error = EngineConnectFailed("Could not connect to an engine replica.")
        elif isinstance(exc, TimeoutError):
            error = EngineTimeout("The engine did not answer in time.")
        else:
            error = EngineServerError("The engine closed the connection before answering.")
        pool.eject(replica, f"{error.code}: {type(exc).__name__}")
        return error

    def _check_status(self, pool: EnginePool, replica: Replica, status: int, body: bytes) -> None:
        if status < 400:
            return
        if status >= 500:
            pool.eject(replica, f"HTTP {status}")
            raise EngineServerError(f"The engine failed with HTTP {status}.")
        raise EngineRejected(f"The engine refused the request: {engine_message(body)}")


def engine_message(body: bytes) -> str:
    """vLLM's error text from ``{"error": {"message"}}`` or ``{"message"}``, bounded."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "no details"
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return message[:MAX_ENGINE_MESSAGE]
    return "no details"


def parse_reply(body: bytes) -> dict[str, object]:
    """An engine's non-streaming answer, checked to look like an OpenAI completion."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EngineBadResponse("The engine answered with something that is not JSON.") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        raise EngineBadResponse("The engine's answer has no 'choices'.")
    return payload
