"""What a key may use, and the sliding-window arithmetic that judges a request (pure).

A minute window is counted in two fixed buckets: the one now running and the one before it,
weighted by how much of it still lies inside the last 60 s (the sliding-window counter).
It needs two counters per scope, unlike a log of every request, and never lets a burst at a
minute's boundary through twice over as a fixed window would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 60.0
NAMES = ("rpm", "tpm", "max_concurrent")


class BadLimits(ValueError):
    """Limits that cannot be stored: the message says which value and why."""


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits of one scope; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None

    def to_json(self) -> dict[str, int]:
        return {name: value for name in NAMES if (value := getattr(self, name)) is not None}

    @classmethod
    def from_json(cls, value: Any, where: str) -> Quota:
        if not isinstance(value, Mapping):
            raise BadLimits(f"{where}: expected an object of {', '.join(NAMES)}")
        unknown = set(value) - set(NAMES) - {"routes"}
        if unknown:
            raise BadLimits(f"{where}: unknown limit {sorted(unknown)[0]!r}")
        counts: dict[str, int | None] = {}
        for name in NAMES:
            number = value.get(name)
            if number is not None and (
                isinstance(number, bool) or not isinstance(number, int) or number < 1
            ):
                raise BadLimits(f"{where}.{name}: a whole number of at least 1, or absent")
            counts[name] = number
        return cls(**counts)

    def describe(self) -> str:
        shown = [f"{name}={value}" for name, value in self.to_json().items()]
        return " ".join(shown) or "none"


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's own limits plus, optionally, tighter ones on single routes."""

    key: Quota = Quota()
    routes: Mapping[str, Quota] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> KeyLimits | None:
        """Parse ``api_keys.limits``; None when it sets no limit at all."""
        if value is None:
            return None
        key = Quota.from_json(value, "limits")
        routes_json = value.get("routes") or {}
        if not isinstance(routes_json, Mapping):
            raise BadLimits("limits.routes: expected an object of route name to limits")
        routes = {
            str(name): Quota.from_json(quota, f"limits.routes.{name}")
            for name, quota in routes_json.items()
        }
        limits = cls(key, {name: q for name, q in routes.items() if not q.empty})
        return None if limits.empty else limits

    @property
    def empty(self) -> bool:
        return self.key.empty and not self.routes

    def to_json(self) -> dict[str, Any] | None:
        if self.empty:
            return None
        out: dict[str, Any] = dict(self.key.to_json())
        if self.routes:
            out["routes"] = {name: quota.to_json() for name, quota in sorted(self.routes.items())}
        return out

    def with_quota(self, route: str | None, quota: Quota) -> KeyLimits:
        """These limits with the key's (route None) or one route's quota replaced."""
        if route is None:
            return KeyLimits(quota, self.routes)
        routes = {name: q for name, q in self.routes.items() if name != route}
        if not quota.empty:
            routes[route] = quota
        return KeyLimits(self.key, routes)

    def scopes(self, key_id: str, route: str) -> list[Scope]:
        """The counters a request of this key on this route is judged by."""
        found = [Scope(f"key:{key_id}", "key", self.key)] if not self.key.empty else []
        quota = self.routes.get(route)
        if quota is not None:
            found.append(Scope(f"key:{key_id}:route:{route}", "route", quota))
        return found

    def describe(self) -> str:
        parts = [self.key.describe()] if not self.key.empty else []
        parts += [f"{name}: {q.describe()}" for name, q in sorted(self.routes.items())]
        return "; ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters: ``name`` is its key in the shared store."""

    name: str
    level: str  # "key" or "route": which limit a refusal names
    quota: Quota


@dataclass(frozen=True, slots=True)
class Window:
    """A scope's counts in the minute before this one and in this one, before this request."""

    previous: int
    current: int

    def used(self, elapsed_s: float) -> float:
        return self.previous * (1.0 - elapsed_s / WINDOW_S) + self.current

    def fits(self, elapsed_s: float, cost: int, limit: int) -> bool:
        return self.used(elapsed_s) + cost <= limit

    def remaining(self, elapsed_s: float, cost: int, limit: int) -> int:
        """What is left after ``cost`` (0 when it does not fit)."""
        return max(0, math.floor(limit - self.used(elapsed_s) - cost))

    def wait_s(self, elapsed_s: float, cost: int, limit: int) -> float | None:
        """Seconds until ``cost`` more fits; None when it never can (more than the limit)."""
        if cost > limit:
            return None
        room = limit - cost - self.current  # what the previous minute's weight may still be
        if room >= 0:
            if self.previous <= room:
                return 0.0
            t = WINDOW_S * (1.0 - room / self.previous) - elapsed_s
            return max(0.0, t)
        # Only once this minute is the previous one: its weight then falls from full.
        after = WINDOW_S * (1.0 - (limit - cost) / self.current)
        return (WINDOW_S - elapsed_s) + max(0.0, after)

    def reset_s(self, elapsed_s: float, cost: int) -> float:
        """Seconds until everything counted so far (this request too) has slid out."""
        if self.current + cost > 0:
            return 2 * WINDOW_S - elapsed_s
        if self.previous > 0:
            return WINDOW_S - elapsed_s
        return 0.0


def minute_of(now_s: float) -> tuple[int, float]:
    """The minute bucket a time falls in and how far into it the time is."""
    minute = math.floor(now_s / WINDOW_S)
    return minute, now_s - minute * WINDOW_S


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``20ms``, ``1s``, ``6m0s``, ``1.5s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"
