"""Training's compute threads: the cores other processes leave free, or a fixed count."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from adapters.training_threads import (
    CpuTimes,
    ThreadGovernor,
    free_threads,
    read_cpu_times,
    usable_cores,
)


def times(busy: float, own: float, at: float) -> CpuTimes:
    return CpuTimes(machine_busy_s=busy, own_s=own, at_s=at)


@pytest.mark.parametrize(
    ("busy", "own", "expected"),
    [
        (0.0, 0.0, 4),  # nothing else runs: every core
        (8.0, 8.0, 4),  # only training itself was busy: its own use frees nothing up
        (2.0, 0.0, 3),  # another process kept one core busy
        (3.0, 1.0, 3),  # the same, with training busy beside it
        (0.1, 0.0, 4),  # a twentieth of a core is noise, not a busy neighbour
        (0.4, 0.0, 3),  # a fifth of a core: that core is taken (a thread there would stall)
        (2.4, 0.0, 2),  # one core and a fifth: two taken
        (8.0, 0.0, 1),  # every core busy with others: still one thread
    ],
)
def test_threads_are_the_cores_others_left(busy: float, own: float, expected: int) -> None:
    assert free_threads(4, times(0, 0, 0), times(busy, own, 2.0)) == expected


def test_no_time_between_the_samples_decides_nothing_but_every_core() -> None:
    assert free_threads(2, times(5, 1, 3.0), times(9, 1, 3.0)) == 2


class Script:
    """CPU times read one after another from a list; what the governor applied."""

    def __init__(self, *samples: CpuTimes) -> None:
        self.samples: Iterator[CpuTimes] = iter(samples)
        self.applied: list[int] = []

    def read(self) -> CpuTimes:
        return next(self.samples)


def test_the_count_drops_when_a_neighbour_starts_and_stays_down_after_it_stops() -> None:
    script = Script(
        times(0, 0, 0.0),
        times(0.1, 0.1, 1.0),  # first step: quiet -> 2
        times(0.5, 0.5, 1.5),  # within 2 s of the last decision: not looked at
        times(4.5, 2.5, 3.0),  # 2 s with a neighbour using one core -> 1
        times(5.0, 3.0, 5.0),  # the neighbour stopped: still 1 (what it used while it had
    )  # to share understates what it needs; rising again would bring the stalls back)
    governor = ThreadGovernor(None, script.applied.append, cores=2, read=script.read)
    assert script.applied == [1]  # the model loads on one thread
    for _ in range(4):
        governor.tick()
    assert script.applied == [1, 2, 1]
    assert governor.current == 1 and governor.used == {1, 2}


def test_a_fixed_count_is_applied_once_and_never_measured_again() -> None:
    script = Script(times(0, 0, 0))  # a second read would raise StopIteration
    governor = ThreadGovernor(3, script.applied.append, cores=2, read=script.read)
    for _ in range(5):
        governor.tick()
    assert script.applied == [3] and governor.used == {3}


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ThreadGovernor(0, print, cores=2)


def test_a_real_busy_process_takes_a_core_away() -> None:
    """On this machine: a process spinning on one core beside us leaves at most the others."""
    cores = usable_cores()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        before = read_cpu_times()
        time.sleep(1.5)  # the measurement window
        after = read_cpu_times()
    finally:
        spinner.kill()
        spinner.wait()
    assert after.machine_busy_s > before.machine_busy_s
    assert 1 <= free_threads(cores, before, after) <= max(1, cores - 1)
