"""Which adapter versions to load or unload on which replica. Pure: no I/O, no clock of its own.

The reconcile loop observes what each replica has loaded, asks ``plan`` what to change, and
applies it. A version is wanted on every replica of its pool while a route (or, later, a
rollout) uses it; one that is no longer wanted is unloaded only once it has been unwanted for a
grace period and no request on it is in flight, so requests that started on it finish on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from enum import StrEnum


class Change(StrEnum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True, slots=True)
class Action:
    change: Change
    replica: str
    version: str


def plan(
    wanted: Set[str],
    loaded: Mapping[str, Set[str]],
    may_unload: Callable[[str], bool],
) -> list[Action]:
    """Actions that bring every replica in ``loaded`` (replica -> versions) to ``wanted``.

    ``may_unload(version)`` says whether an unwanted version is past its grace period and idle.
    Loads come first so a replica never goes without a version a route needs.
    """
    actions = [
        Action(Change.LOAD, replica, version)
        for replica, have in sorted(loaded.items())
        for version in sorted(wanted - have)
    ]
    actions += [
        Action(Change.UNLOAD, replica, version)
        for replica, have in sorted(loaded.items())
        for version in sorted(have - wanted)
        if may_unload(version)
    ]
    return actions


class UnwantedSince:
    """Remembers since when each version has been unwanted (times from the caller's clock)."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def update(self, wanted: Set[str], present: Set[str], now: float) -> None:
        for version in present - wanted:
            self._since.setdefault(version, now)
        for version in list(self._since):
            if version in wanted or version not in present:
                del self._since[version]

    def unwanted_for(self, version: str, now: float) -> float:
        since = self._since.get(version)
        return 0.0 if since is None else now - since
