"""A route's service health, pure: latency, time to first token, errors and answers cut by a
limit in a window, each against a target the route sets (or the gateway's default).

These move with load, hardware and the engine's batch, not with what the model learned, so they
are never drift: a signal over its target is ``breach`` (an SLO missed), under it ``ok``, and
with fewer than ``MIN_SAMPLES`` values in the window ``insufficient``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum

# Values a signal needs in the window before it is judged (a p95 of fewer says little).
MIN_SAMPLES = 20
QUANTILE = 0.95


class Health(StrEnum):
    OK = "ok"
    BREACH = "breach"
    INSUFFICIENT = "insufficient"


class Signal(StrEnum):
    LATENCY = "latency_p95_ms"  # successful requests
    TTFT = "ttft_p95_ms"  # successful streams
    ERRORS = "error_rate"  # 5xx among all requests
    CUT = "limit_rate"  # successful answers that ended at a limit (finish_reason length)


@dataclass(frozen=True, slots=True)
class Targets:
    """What a route promises: p95 latency and time to first token (ms), and the shares of
    requests that may fail and of answers that may be cut by a limit."""

    latency_p95_ms: float
    ttft_p95_ms: float
    error_budget: float
    limit_budget: float

    def overridden(self, overrides: Mapping[str, float | None]) -> Targets:
        """These targets with the route's own where it sets them (None keeps the default)."""
        names = {f.name for f in fields(self)}
        given = {k: float(v) for k, v in overrides.items() if k in names and v is not None}
        return replace(self, **given)

    def of(self, signal: Signal) -> float:
        return {
            Signal.LATENCY: self.latency_p95_ms,
            Signal.TTFT: self.ttft_p95_ms,
            Signal.ERRORS: self.error_budget,
            Signal.CUT: self.limit_budget,
        }[signal]


@dataclass(frozen=True, slots=True)
class ServiceCounts:
    """A window's service figures, as the store counts them."""

    requests: int
    errors: int  # status 5xx
    answered: int  # status under 400
    cut: int  # answered, finish_reason length
    latencies: int
    latency_p95_ms: float | None
    ttfts: int
    ttft_p95_ms: float | None
    error_classes: Mapping[str, int]  # error code -> requests, every status


@dataclass(frozen=True, slots=True)
class SignalHealth:
    signal: Signal
    value: float | None  # None without values
    target: float
    samples: int
    status: Health


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    signals: tuple[SignalHealth, ...]
    error_classes: Mapping[str, int]

    @property
    def status(self) -> Health:
        """breach over ok over insufficient."""
        seen = {s.status for s in self.signals}
        return next((h for h in (Health.BREACH, Health.OK) if h in seen), Health.INSUFFICIENT)


def quantile_rank(n: int, q: float = QUANTILE) -> int:
    """The 0-based rank, among ``n`` sorted values, of their ``q`` quantile (nearest rank)."""
    if n <= 0:
        raise ValueError("a quantile needs values")
    return max(0, math.ceil(q * n) - 1)


def _signal(
    signal: Signal, value: float | None, samples: int, targets: Targets, minimum: int
) -> SignalHealth:
    target = targets.of(signal)
    if value is None or samples < max(1, minimum):
        status = Health.INSUFFICIENT
    else:
        status = Health.BREACH if value > target else Health.OK
    return SignalHealth(signal, value, target, samples, status)


def judge_service(
    counts: ServiceCounts, targets: Targets, minimum: int = MIN_SAMPLES
) -> ServiceHealth:
    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return ServiceHealth(
        (
            _signal(Signal.LATENCY, counts.latency_p95_ms, counts.latencies, targets, minimum),
            _signal(Signal.TTFT, counts.ttft_p95_ms, counts.ttfts, targets, minimum),
            _signal(
                Signal.ERRORS,
                share(counts.errors, counts.requests),
                counts.requests,
                targets,
                minimum,
            ),
            _signal(
                Signal.CUT, share(counts.cut, counts.answered), counts.answered, targets, minimum
            ),
        ),
        dict(counts.error_classes),
    )
