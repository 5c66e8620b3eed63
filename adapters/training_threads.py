"""How many threads training computes with: the cores that other processes leave free.

torch's CPU kernels split each operation over a pool of threads that spin at every barrier. When
one of those threads shares its core with another busy process (vLLM's CPU worker keeps one
core busy, even between requests), every operation waits for the thread that lost its core.
Measured on 2 cores beside a vLLM answering two clients: 24 training steps took 41 s on one
thread and did not finish in 500 s on two (alone, both took 16 s). So unless a count is set,
training measures what the other processes used since its last look (the machine's busy CPU
time less its own) and computes on the cores they left, re-deciding every few seconds: fewer as
soon as another process gets busy, never more again within the run (on contended cores the
others get less CPU than they want, so what they used understates what they need, and a count
that rises again brings back the stalls).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# Other processes using up to this share of a core in all still leave every core to training.
SLACK_CORES = 0.1
DECIDE_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class CpuTimes:
    machine_busy_s: float  # every core's non-idle time since boot
    own_s: float  # this process's user and system time
    at_s: float  # monotonic clock


def read_cpu_times() -> CpuTimes:
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    return CpuTimes(sum(machine) - idle, own.user + own.system, time.monotonic())


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def free_threads(cores: int, before: CpuTimes, after: CpuTimes) -> int:
    """Threads for the next steps: the cores that other processes left entirely free between
    the two samples (a core of which others used any share beyond ``SLACK_CORES`` counts as
    taken); at least 1, at most ``cores``."""
    elapsed = after.at_s - before.at_s
    if elapsed <= 0:
        return cores
    busy = after.machine_busy_s - before.machine_busy_s
    own = after.own_s - before.own_s
    others = max(0.0, busy - own) / elapsed
    return max(1, min(cores, cores - math.ceil(others - SLACK_CORES)))


class ThreadGovernor:
    """Sets the compute threads between steps: ``fixed`` if given, else what is free: decided
    after the model loads, then only ever lowered."""

    def __init__(
        self,
        fixed: int | None,
        apply: Callable[[int], None],
        *,
        cores: int | None = None,
        read: Callable[[], CpuTimes] = read_cpu_times,
        every_s: float = DECIDE_EVERY_S,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError("threads must be positive")
        self._fixed, self._apply, self._read, self._every_s = fixed, apply, read, every_s
        self._cores = cores or usable_cores()
        self._last = read()
        self.current = 0  # none applied yet
        self.used: set[int] = set()
        # Following the free cores, the model loads on one thread (a count too high stalls
        # every operation beside a busy engine), and the first step's look decides from what
        # the other processes used meanwhile.
        self._set(fixed if fixed is not None else 1)
        self._decided = fixed is not None

    def tick(self) -> None:
        """Between steps: re-decide once ``every_s`` has passed since the last decision."""
        if self._fixed is not None:
            return
        now = self._read()
        if self._decided and now.at_s - self._last.at_s < self._every_s:
            return
        free = free_threads(self._cores, self._last, now)
        self._set(min(free, self.current) if self._decided else free)
        self._last, self._decided = now, True

    def _set(self, threads: int) -> None:
        if threads != self.current:
            self._apply(threads)
            self.current = threads
        self.used.add(threads)
