"""Keeps every replica serving the adapter versions its routes need.

Each pass observes every replica (``GET /v1/models``), records what it serves (the engine
client only sends a version to replicas that have it), loads what is missing, checks that each
new load generates, and unloads versions nobody wants any more once they have been unwanted for
a grace period and no request on them is in flight, here or (on PostgreSQL, see ``peers``) on
any other gateway. A pool that declares how many versions a replica holds is planned by
traffic instead (``plan_by_traffic``): each version a route needs on as many replicas as its
recent request rate asks for, versions no route needs kept while there is room. After a vLLM
restart the next pass loads its adapters again with nobody acting. (Whether a version changes
anything at all is decided from its weights when it is registered, not here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from adapters.placement import Action, Change, Traffic, UnwantedSince, plan, plan_by_traffic
from monitoring.metrics import Metrics
from service.engine.adapter_host import AdapterHost, AdapterHostError
from service.engine.pool import EnginePool, Replica
from service.errors import EngineError
from service.routes.view import Served

log = logging.getLogger(__name__)


class OtherGateways(Protocol):
    async def busy_elsewhere(self) -> frozenset[str]:
        """Versions another live gateway wants or still has requests in flight on."""
        ...


class AdapterReconciler:
    def __init__(
        self,
        pools: list[EnginePool],
        host: AdapterHost,
        snapshot: Served,
        metrics: Metrics,
        *,
        interval_s: float,
        unload_grace_s: float,
        clock: Callable[[], float] = time.monotonic,
        others: OtherGateways | None = None,
    ) -> None:
        self._pools = pools
        self._host = host
        self._snapshot = snapshot
        self._metrics = metrics
        self._interval_s = interval_s
        self._grace_s = unload_grace_s
        self._clock = clock
        self._others = others
        self._unwanted = {pool.name: UnwantedSince() for pool in pools}
        self._traffic = {pool.name: Traffic(pool.rate_half_life_s) for pool in pools}
        self._locks = {pool.name: asyncio.Lock() for pool in pools}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Reconcile now (e.g. a route switched to another version), not at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.reconcile()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and this loop would then never stop at shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def reconcile(self) -> None:
        for pool in self._pools:
            async with self._locks[pool.name]:
                await self._reconcile_pool(pool)

    async def place(self, pool: EnginePool, version: str, path: str) -> None:
        """Load ``version`` on every usable replica of ``pool`` (with a declared capacity: on the
        least full one, unless one holds it already) and check it generates, or raise.

        Used before a route is switched to the version, or a rollout's first request on it, so
        the switch only happens once the replicas can serve it. When any replica fails, a
        version no route wants is unloaded again from every replica, so a refused version is
        served nowhere.
        """
        async with self._locks[pool.name]:
            replicas = [r for r in pool.replicas if r.usable(self._clock())]
            if not replicas:
                raise AdapterHostError(f"pool '{pool.name}' has no usable replica to load on")
            if pool.capacity is not None:
                # One replica is enough to serve it; the next passes size its set by traffic.
                if any(version in r.loaded for r in replicas):
                    return
                replicas = [min(replicas, key=lambda r: (len(r.loaded), r.in_flight, r.url))]
            try:
                for replica in replicas:
                    await self._load(pool, replica, version, path)
            except EngineError:
                if version not in self._snapshot.current.wanted_adapters(pool.name):
                    await self._unload_everywhere(pool, version)
                raise

    async def _unload_everywhere(self, pool: EnginePool, version: str) -> None:
        for replica in pool.replicas:
            try:
                if version in await self._host.loaded(pool, replica):
                    await self._host.unload(pool, replica, version)
            except EngineError as exc:  # the reconcile loop unloads it later: it is unwanted
                log.warning("unloading %s from %s failed: %s", version, replica.url, exc.message)
            replica.loaded = replica.loaded - {version}

    async def _reconcile_pool(self, pool: EnginePool) -> None:
        snapshot = self._snapshot.current
        wanted = set(snapshot.wanted_adapters(pool.name))
        loaded: dict[str, set[str]] = {}
        by_url = {r.url: r for r in pool.replicas}
        for replica in pool.replicas:
            try:
                have = await self._host.loaded(pool, replica)
            except EngineError as exc:
                replica.loaded = frozenset()
                log.debug("cannot list adapters on %s: %s", replica.url, exc.message)
                continue
            replica.loaded = frozenset(have)
            loaded[replica.url] = have
            if pool.capacity is not None:
                replica.engine_running = await self._running(replica)
        now = self._clock()
        unwanted = self._unwanted[pool.name]
        unwanted.update(wanted, set().union(*loaded.values()), now)

        def idle_here(version: str) -> bool:
            idle = pool.in_flight_by_target.get(version, 0) == 0
            return idle and unwanted.unwanted_for(version, now) >= self._grace_s

        candidates = {v for v in set().union(*loaded.values()) - wanted if idle_here(v)}
        busy = await self._busy_elsewhere(candidates)

        def may_unload(version: str) -> bool:
            return idle_here(version) and version not in busy

        if pool.capacity is None:
            actions = plan(wanted, loaded, may_unload)
        else:
            actions = self._plan_by_traffic(pool, pool.capacity, wanted, loaded, may_unload, now)
        for action in actions:
            await self._apply(pool, by_url[action.replica], action)
        self._publish(pool)

    def _plan_by_traffic(
        self,
        pool: EnginePool,
        capacity: int,
        wanted: set[str],
        loaded: dict[str, set[str]],
        may_unload: Callable[[str], bool],
        now: float,
    ) -> list[Action]:
        traffic = self._traffic[pool.name]
        saturated, pool.saturated = pool.saturated, set()
        traffic.update(pool.started_by_target, set(pool.in_flight_by_target), saturated, now)
        demand = traffic.demand(wanted, set().union(*loaded.values()))
        by_url = {r.url: r for r in pool.replicas}
        # An ejected replica serves nothing: its versions are placed as if it held none, on
        # the others, and it is left as it is until it is usable again.
        usable = {url: have for url, have in loaded.items() if by_url[url].usable(now)}

        def may_leave(url: str, version: str) -> bool:
            if version in wanted:  # a copy beyond what its traffic asks for: idle there
                return by_url[url].running[version] == 0
            return may_unload(version)

        return plan_by_traffic(demand, usable, capacity, may_leave)

    async def _running(self, replica: Replica) -> frozenset[str]:
        """The adapters the replica's batch runs, or none known when its /metrics fails."""
        try:
            return await self._host.running(replica)
        except EngineError as exc:
            log.debug("cannot read running adapters on %s: %s", replica.url, exc.message)
            return frozenset()

    async def _busy_elsewhere(self, candidates: set[str]) -> frozenset[str]:
        """Of the versions this gateway would unload, those other gateways still need."""
        if not candidates or self._others is None:
            return frozenset()
        try:
            return await self._others.busy_elsewhere()
        except Exception:
            # Unknown is not idle: unload nothing this pass, the next one asks again.
            log.warning("cannot read the other gateways' in-flight versions", exc_info=True)
            return frozenset(candidates)

    async def _apply(self, pool: EnginePool, replica: Replica, action: Action) -> None:
        try:
            if action.change is Change.LOAD:
                view = self._snapshot.current.adapters[action.version]
                await self._load(pool, replica, action.version, view.store_path)
            else:
                # Taken off the replica before the call, so no request starts on it meanwhile;
                # one that started since the plan keeps it until a later pass.
                replica.loaded = replica.loaded - {action.version}
                if replica.running[action.version]:
                    replica.loaded = replica.loaded | {action.version}
                    return
                await self._host.unload(pool, replica, action.version)
                log.info("unloaded %s from %s", action.version, replica.url)
        except EngineError as exc:
            log.warning(
                "%s %s on %s failed: %s", action.change, action.version, replica.url, exc.message
            )

    async def _load(self, pool: EnginePool, replica: Replica, version: str, path: str) -> None:
        if version not in replica.loaded:
            await self._host.load(pool, replica, version, path)
            try:
                await self._host.generates(replica, version)
            except EngineError:
                await self._host.unload(pool, replica, version)
                raise
            log.info("loaded %s on %s", version, replica.url)
        replica.loaded = replica.loaded | {version}
        self._metrics.adapter_loaded.labels(pool.name, replica.url, version).set(1)

    def _publish(self, pool: EnginePool) -> None:
        for replica in pool.replicas:
            running = len(replica.running) - (pool.base_model in replica.running)
            self._metrics.replica_versions_held.labels(pool.name, replica.url).set(
                len(replica.loaded)
            )
            self._metrics.replica_versions_running.labels(pool.name, replica.url).set(running)
            for version in self._snapshot.current.adapters:
                if self._snapshot.current.adapters[version].pool != pool.name:
                    continue
                state = 1.0 if version in replica.loaded else 0.0
                self._metrics.adapter_loaded.labels(pool.name, replica.url, version).set(state)
