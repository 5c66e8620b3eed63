"""Engine pools: replicas, the choice of a replica, ejection of failing replicas, health probes.

A pool without a declared capacity sends each request to the usable replica with the fewest
requests in flight; one that declares ``max_loras`` or ``max_cpu_loras`` chooses by adapter
affinity first (``affinity``).

A replica starts ``unknown`` (usable, not yet proven), becomes ``healthy`` when a real one-token
generation succeeds (vLLM can answer /health while generation hangs), and is ejected for
``eject_for_s`` after a failed call or probe. Ejected replicas get traffic again once a probe
passes or the ejection expires. Probes eject only after ``failures_to_eject`` consecutive
failures (a single one is often a keep-alive connection the engine had just closed), and a probe
that times out while the replica has requests in flight is not counted at all: it waited behind
them, and their own timeouts judge the replica. A failed request ejects at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

import aiohttp

from monitoring.metrics import Metrics
from service.engine.affinity import Seat, pick
from service.settings import EnginePoolSettings

log = logging.getLogger(__name__)


class ReplicaState(StrEnum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    EJECTED = "ejected"


class Replica:
    __slots__ = (
        "answered", "ejected_until", "engine_running", "in_flight", "in_flight_gauge",
        "last_error", "loaded", "pool", "probe_failures", "running", "state", "url",
    )  # fmt: skip

    def __init__(self, pool: str, url: str, metrics: Metrics) -> None:
        self.pool = pool
        self.url = url.rstrip("/")
        self.in_flight_gauge = metrics.replica_in_flight.labels(pool, self.url)
        self.state = ReplicaState.UNKNOWN
        self.in_flight = 0
        self.ejected_until = 0.0
        self.last_error: str | None = None
        self.probe_failures = 0  # consecutive
        # Whether it was ever healthy: until then a failing replica is starting, not broken.
        self.answered = False
        # Adapter versions the replica was last seen serving (kept by the reconcile loop).
        self.loaded: frozenset[str] = frozenset()
        # Requests in flight here per target: the versions running in its slots.
        self.running: Counter[str] = Counter()
        # The adapters its running batch used when last asked (its /metrics): other gateways'
        # requests too. Kept by the reconcile loop for pools with a declared capacity.
        self.engine_running: frozenset[str] = frozenset()

    def usable(self, now: float) -> bool:
        return self.state is not ReplicaState.EJECTED or now >= self.ejected_until

    @property
    def shown_state(self) -> str:
        """The state as /readyz and logs tell it: ``starting`` until it first answers."""
        return self.state.value if self.answered else "starting"


class EnginePool:
    def __init__(self, config: EnginePoolSettings, metrics: Metrics, eject_for_s: float) -> None:
        self.name = config.name
        self.base_model = config.base_model
        self.max_lora_rank = config.max_lora_rank
        self.replicas = [Replica(config.name, url, metrics) for url in config.urls]
        self.in_flight_by_target: Counter[str] = Counter()
        self.max_loras = config.max_loras
        self.capacity = config.capacity
        self.spill_depth = config.spill_queue_depth
        self.rate_half_life_s = config.rate_half_life_s
        # Requests started per target (running totals), and the versions whose replicas were
        # saturated since the reconcile loop last looked: what placement by traffic reads.
        self.started_by_target: Counter[str] = Counter()
        self.saturated: set[str] = set()
        self._metrics = metrics
        self._eject_for_s = eject_for_s
        for replica in self.replicas:
            self._publish(replica)

    def choose(self, exclude: Iterable[Replica] = (), target: str | None = None) -> Replica | None:
        """The usable replica with the fewest requests in flight (healthy before unknown), or,
        with a declared capacity, the best by adapter affinity.

        For an adapter version, only replicas that have it loaded are candidates.
        """
        if self.capacity is not None:
            return self._choose_by_affinity(exclude, target)
        now = time.monotonic()
        adapter = target is not None and target != self.base_model
        best: Replica | None = None
        for replica in self.replicas:
            if replica in exclude or not replica.usable(now):
                continue
            if adapter and target not in replica.loaded:
                continue
            if best is None or (
                replica.state is ReplicaState.HEALTHY,
                -replica.in_flight,
            ) > (best.state is ReplicaState.HEALTHY, -best.in_flight):
                best = replica
        return best

    def _choose_by_affinity(self, exclude: Iterable[Replica], target: str | None) -> Replica | None:
        now = time.monotonic()
        adapter = target if target is not None and target != self.base_model else None
        candidates = [r for r in self.replicas if r not in exclude and r.usable(now)]
        seats = [self._seat(r, adapter) for r in candidates]
        chosen = pick(seats, self.spill_depth)
        if chosen is None or seats[chosen].holds:
            return None if chosen is None else candidates[chosen]
        # It would spill to a replica without the version, which cannot serve it before it is
        # loaded there: the version's set grows on the next reconcile pass; a holder serves now.
        if adapter is not None:
            self.saturated.add(adapter)
            self._metrics.adapter_saturated.labels(self.name, adapter).inc()
        holders = [i for i, seat in enumerate(seats) if seat.holds]
        best = pick([seats[i] for i in holders], self.spill_depth)
        return None if best is None else candidates[holders[best]]

    def _seat(self, replica: Replica, adapter: str | None) -> Seat:
        """``replica`` for a request on ``adapter`` (None: the base model, which needs no slot)."""
        base_running = self.base_model in replica.running
        active_adapters = max(len(replica.running) - base_running, len(replica.engine_running))
        return Seat(
            holds=adapter is None or adapter in replica.loaded,
            active=adapter is None
            or replica.running[adapter] > 0
            or adapter in replica.engine_running,
            free_slot=self.max_loras is None or active_adapters < self.max_loras,
            healthy=replica.state is ReplicaState.HEALTHY,
            in_flight=replica.in_flight,
        )

    def eject(self, replica: Replica, reason: str) -> None:
        if not replica.answered:
            log.info("engine replica %s of pool %s is starting: %s", replica.url, self.name, reason)
        elif replica.state is not ReplicaState.EJECTED:
            log.warning("ejecting engine replica %s of pool %s: %s", replica.url, self.name, reason)
        replica.state = ReplicaState.EJECTED
        replica.ejected_until = time.monotonic() + self._eject_for_s
        replica.last_error = reason
        self._publish(replica)

    def mark_healthy(self, replica: Replica) -> None:
        if replica.state is not ReplicaState.HEALTHY:
            log.info("engine replica %s of pool %s is healthy", replica.url, self.name)
        replica.answered = True
        replica.state = ReplicaState.HEALTHY
        replica.last_error = None
        self._publish(replica)

    def acquire(self, replica: Replica, target: str) -> None:
        replica.in_flight += 1
        replica.in_flight_gauge.inc()
        replica.running[target] += 1
        self.in_flight_by_target[target] += 1
        self.started_by_target[target] += 1

    def release(self, replica: Replica, target: str) -> None:
        replica.in_flight -= 1
        replica.in_flight_gauge.dec()
        _decrement(replica.running, target)
        _decrement(self.in_flight_by_target, target)

    def healthy_count(self) -> int:
        return sum(r.state is ReplicaState.HEALTHY for r in self.replicas)

    def _publish(self, replica: Replica) -> None:
        healthy = 1.0 if replica.state is ReplicaState.HEALTHY else 0.0
        self._metrics.replica_healthy.labels(self.name, replica.url).set(healthy)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]


class HealthProber:
    """Sends a one-token completion to every replica on an interval."""

    def __init__(
        self,
        pools: list[EnginePool],
        http: aiohttp.ClientSession,
        interval_s: float,
        timeout_s: float,
        *,
        failures_to_eject: int = 2,
    ) -> None:
        self._pools = pools
        self._http = http
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._failures_to_eject = failures_to_eject

    async def probe(self, pool: EnginePool, replica: Replica) -> bool:
        body = {"model": pool.base_model, "prompt": "ping", "max_tokens": 1, "temperature": 0}
        try:
            async with self._http.post(
                f"{replica.url}/v1/completions", json=body, timeout=self._timeout
            ) as response:
                payload = await response.json(content_type=None)
                ok = response.status == 200 and bool(payload.get("choices"))
                reason = f"probe answered HTTP {response.status}"
        except TimeoutError:
            if replica.in_flight:
                # Queued behind the requests it is serving: busy, not dead. Those requests'
                # own timeouts eject a replica that hangs; ejecting a saturated one on a slow
                # probe would turn load into an outage of the whole pool.
                log.info("probe of busy replica %s timed out; not counted", replica.url)
                return replica.state is not ReplicaState.EJECTED
            ok, reason = False, "probe failed: TimeoutError"
        except (aiohttp.ClientError, ValueError, AttributeError) as exc:
            ok, reason = False, f"probe failed: {type(exc).__name__}"
        if ok:
            replica.probe_failures = 0
            pool.mark_healthy(replica)
            return True
        replica.probe_failures += 1
        replica.last_error = reason
        if replica.probe_failures >= self._failures_to_eject:
            pool.eject(replica, reason)
        else:  # one failure may be a closed keep-alive connection, not a dead engine
            count, limit = replica.probe_failures, self._failures_to_eject
            log.info("probe of %s failed (%d of %d): %s", replica.url, count, limit, reason)
        return False

    async def probe_all(self) -> None:
        await asyncio.gather(
            *(self.probe(pool, replica) for pool in self._pools for replica in pool.replicas)
        )

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self._interval_s)
