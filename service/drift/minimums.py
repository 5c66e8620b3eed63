"""What a route's drift minimums cost, as measured. Pure.

Smaller minimums (records of the reference, values of a current window) let a quiet route be
judged sooner. The false-alarm rate stays held by the route's correction (``judge_route``);
what smaller windows cost is what they catch. The rows are ``python
bench/drift_false_alarms.py`` (seed 1, 2,000 windows per row, a route of 12 features judged at
a 1 % false-alarm rate; rerun it and copy its table here when the statistics change).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Measured:
    reference: int
    window: int
    false_alarms: float  # share of unchanged windows with some feature at warn or drift
    drift_false_alarms: float  # ... at drift
    moved_caught: float  # a category mix moved by Jensen-Shannon distance 0.16: warn or drift
    shuffled_caught: float  # the demo's shuffled labels (distance 0.42): drift


MEASURED = (
    Measured(500, 200, 0.010, 0.004, 0.594, 1.0),  # the defaults
    Measured(1000, 200, 0.010, 0.001, 0.802, 1.0),
    Measured(500, 500, 0.004, 0.0, 0.968, 1.0),
    Measured(250, 100, 0.004, 0.002, 0.244, 1.0),
    Measured(100, 50, 0.005, 0.005, 0.044, 0.982),
    Measured(50, 20, 0.009, 0.009, 0.012, 0.368),
)


def measured_for(reference: int, window: int) -> Measured | None:
    """The measured row these minimums are at least as strict as (the largest window, then
    reference, not over them); None under the smallest row measured."""
    fits = [m for m in MEASURED if m.reference <= reference and m.window <= window]
    return max(fits, key=lambda m: (m.window, m.reference), default=None)
