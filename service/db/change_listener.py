"""Hears, on PostgreSQL, every change to what the gateways' snapshot holds.

The database's own triggers (migration 0014) send a ``NOTIFY`` on ``CHANNEL`` whenever routes,
keys, adapter versions or a rollout's traffic change, whoever writes them; PostgreSQL delivers
it when the transaction commits, and not at all if it rolls back.

One dedicated connection per gateway, outside the engine's pool, runs ``LISTEN``. Each
notification calls ``on_change`` (the snapshot's ``wake``, which coalesces bursts). When the
connection drops it is opened again with a growing backoff, and ``on_change`` is called after
every (re)connection too: notifications sent while nobody listened are lost, so the gateway
reloads everything once. A connection that dies silently (no FIN) is found by a ``SELECT 1``
every ``check_s``. While it is down the snapshot's periodic refresh reloads instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.session import shown_url

log = logging.getLogger(__name__)

CHANNEL = "loragate_changes"  # also in the triggers of alembic/versions/0014

# Keyword arguments SQLAlchemy's asyncpg dialect takes for itself, not for asyncpg.connect.
_DIALECT_ONLY = (
    "async_creator_fn",
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
)


class ListenerLost(ConnectionError):
    """The listening connection was closed."""


class ChangeListener:
    def __init__(
        self,
        engine: AsyncEngine,
        on_change: Callable[[], None],
        *,
        check_s: float = 10.0,
        timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        self._connect_args: tuple[list[Any], dict[str, Any]] = (
            list(args),
            {k: v for k, v in kwargs.items() if k not in _DIALECT_ONLY},
        )
        self._where = shown_url(engine.url)
        self._on_change = on_change
        self._check_s = check_s
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        first, longest = self._backoff_s
        delay = first
        while True:
            try:
                await self._listen()
            except Exception:
                # The loop must outlive outages; the periodic refresh covers the gap.
                if self.connected.is_set():  # it was up: back off from the shortest wait again
                    self.connected.clear()
                    delay = first
                log.warning(
                    "listening for changes on %s stopped; again in %.1f s",
                    self._where, delay, exc_info=True,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _listen(self) -> None:
        """Listen until the connection is lost (then raise); call ``on_change`` once up."""
        args, kwargs = self._connect_args
        async with asyncio.timeout(self._timeout_s):
            connection = await asyncpg.connect(*args, **kwargs)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._heard)
            self.connected.set()
            log.info("listening for changes on %s", self._where)
            self._on_change()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._check_s):
                        await lost.wait()
                if not lost.is_set():
                    async with asyncio.timeout(self._timeout_s):
                        await connection.execute("SELECT 1")
            raise ListenerLost("the listening connection was closed")
        finally:
            connection.terminate()

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        log.debug("a change to %s was committed", payload)
        self._on_change()
