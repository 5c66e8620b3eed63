"""Which replica takes a request: the one that serves its version without a swap, then the least
loaded. Pure.

vLLM runs at most ``max_loras`` adapters in a batch; a request whose adapter is not in a slot
waits for one and brings it in (a swap). So a replica where the version is active (requests on
it running there now) is best, then one with a free slot, then any replica that holds it; among
equals the one with the fewest requests in flight, healthy before not yet proven. A replica with
``spill_depth`` or more requests in flight is saturated: a request goes to one that does not hold
its version (and must load it) only when every holder is saturated; that is a spill, and it
tells placement to grow the version's replica set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Rank = tuple[int, bool, bool, bool, int]


@dataclass(frozen=True, slots=True)
class Seat:
    """A replica as seen for one request's version."""

    holds: bool  # the version is loaded there
    active: bool  # requests on the version are running there (or it needs no slot)
    free_slot: bool  # fewer versions are running there than it has slots
    healthy: bool
    in_flight: int


def rank(seat: Seat, spill_depth: int) -> Rank:
    """Lower is better: holders below the spill depth, then spills, then saturated replicas."""
    saturated = seat.in_flight >= spill_depth
    tier = 2 * saturated + (not seat.holds)
    return (tier, not seat.healthy, not seat.active, not seat.free_slot, seat.in_flight)


def pick(seats: Sequence[Seat], spill_depth: int) -> int | None:
    """The index of the seat to send the request to (the first of equals), or None if empty."""
    best: int | None = None
    best_rank: Rank | None = None
    for index, seat in enumerate(seats):
        seat_rank = rank(seat, spill_depth)
        if best_rank is None or seat_rank < best_rank:
            best, best_rank = index, seat_rank
    return best


def spills(seat: Seat, spill_depth: int) -> bool:
    """Whether sending the request to ``seat`` means its version's replicas are saturated."""
    return not seat.holds or seat.in_flight >= spill_depth
