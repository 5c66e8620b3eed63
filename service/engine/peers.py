"""Gateways in step on unloads (PostgreSQL): what each gateway's requests still need.

Every gateway keeps one row in ``gateway_peers``: the adapter versions its snapshot wants, and,
of the versions it does not want, those it still has requests in flight on (``draining``). It
writes the row soon after each snapshot reload and whenever those counts change, and at least
every ``heartbeat_s``; rows whose heartbeat is older than ``stale_after_s`` are a dead gateway's
and count for nothing. The reconciler unloads a version only when no other live gateway's row
lists it (``busy_elsewhere``), on top of its own rules (unwanted for the grace period, no request
of its own on it).

Why such an unload cannot fail a request in flight on another gateway B:

1. B sends a request to version V only if its current snapshot wants V: requests take their
   target from the snapshot's routes and rollouts, which is what ``wanted`` is made of.
2. While B's snapshot wants V, B's row lists V as wanted: the row is rewritten only from a
   snapshot already installed, so until the write after a reload lands, the row still shows the
   older snapshot's set. A row never claims less than the snapshot B serves from.
3. Once B installs a snapshot without V, B starts no new request on V. The requests it started
   before hold V in its pools' in-flight counters, and the row written after that reload carries
   those counts under ``draining``; each later write can only show fewer.
4. So a fresh row that lists V neither as wanted nor as draining was computed after B stopped
   routing to V, when B had no request on V left, and none can come. Every clock compared is
   the database's (``now()``), so gateways' clocks may disagree.

Limits, each stated in the README: a gateway that is alive but cannot write its row for
``stale_after_s`` is taken for dead; the counters cover a request from the moment it takes a
replica until the engine has answered (a stream until it ends), so the few milliseconds between
a request choosing V and taking a replica (a client schema check), or between the two engine
calls of an answer asked again, are covered by the grace period, not by this table; and a
version switched back to while another gateway unloads it may miss a replica until the next
reconcile pass loads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.db.models import GatewayPeer
from service.engine.pool import EnginePool
from service.routes.view import Snapshot

log = logging.getLogger(__name__)

# How often the in-flight counters are looked at (in memory) for a change worth writing.
CHECK_S = 0.25
# Rows this many staleness limits old are deleted (they are ignored long before).
PRUNE_AFTER_STALE = 10


@dataclass(frozen=True, slots=True)
class Presence:
    """What a gateway's requests need: versions its snapshot wants, and in-flight counts of
    versions it no longer wants."""

    wanted: tuple[str, ...] = ()
    draining: Mapping[str, int] = field(default_factory=dict)


def presence(snapshot: Snapshot, pools: Iterable[EnginePool]) -> Presence:
    wanted: set[str] = set()
    draining: dict[str, int] = {}
    for pool in pools:
        pool_wanted = snapshot.wanted_adapters(pool.name)
        wanted |= pool_wanted
        for target, count in pool.in_flight_by_target.items():
            if count > 0 and target not in pool_wanted and target != pool.base_model:
                draining[target] = draining.get(target, 0) + count
    return Presence(tuple(sorted(wanted)), draining)


def gateway_id() -> str:
    """This process among the gateways: host (the pod's name on Kubernetes), pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:100]


class Peers:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        snapshot: Callable[[], Snapshot],
        pools: list[EnginePool],
        *,
        heartbeat_s: float,
        stale_after_s: float,
        gateway: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = gateway or gateway_id()
        self._sessions = sessions
        self._snapshot = snapshot
        self._pools = pools
        self._heartbeat_s = heartbeat_s
        self._stale = timedelta(seconds=stale_after_s)
        self._clock = clock
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Write the row now (e.g. after a snapshot reload), not at the next check."""
        self._poke.set()

    async def run(self) -> None:
        written: Presence | None = None
        due = self._clock()  # the next write that must happen even with nothing changed
        while True:
            now = self._clock()
            current = presence(self._snapshot(), self._pools)
            if current != written or now >= due:
                try:
                    await self.publish(current)
                    written, due = current, now + self._heartbeat_s
                except Exception:
                    # Others see this gateway's last row until it goes stale; try again later.
                    log.warning("writing this gateway's row in gateway_peers failed", exc_info=True)
                    written, due = current, now + min(self._heartbeat_s, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(CHECK_S, due - self._clock()))):
                    await self._poke.wait()
            self._poke.clear()

    async def publish(self, current: Presence) -> None:
        values = {"wanted": list(current.wanted), "draining": dict(current.draining)}
        upsert = insert(GatewayPeer).values(id=self.id, heartbeat_at=func.now(), **values)
        upsert = upsert.on_conflict_do_update(
            index_elements=[GatewayPeer.id], set_={"heartbeat_at": func.now(), **values}
        )
        old = GatewayPeer.heartbeat_at < func.now() - self._stale * PRUNE_AFTER_STALE
        async with self._sessions.begin() as session:
            await session.execute(upsert)
            await session.execute(delete(GatewayPeer).where(old))

    async def busy_elsewhere(self) -> frozenset[str]:
        """Versions another live gateway wants or still has requests in flight on."""
        query = select(GatewayPeer.wanted, GatewayPeer.draining).where(
            GatewayPeer.id != self.id, GatewayPeer.heartbeat_at > func.now() - self._stale
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        busy: set[str] = set()
        for wanted, draining in rows:
            busy.update(wanted)
            busy.update(version for version, count in draining.items() if count > 0)
        return frozenset(busy)

    async def leave(self) -> None:
        """At shutdown: this gateway's requests are over, its row goes."""
        try:
            async with self._sessions.begin() as session:
                await session.execute(delete(GatewayPeer).where(GatewayPeer.id == self.id))
        except Exception:
            log.warning("removing this gateway's row from gateway_peers failed", exc_info=True)
