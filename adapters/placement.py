"""Which adapter versions to load or unload on which replica. Pure: no I/O, no clock of its own.

The reconcile loop observes what each replica has loaded, asks ``plan`` (or, for a pool that
declares how many versions a replica holds, ``plan_by_traffic``) what to change, and applies
it. Without a declared capacity a version is wanted on every replica of its pool while a route
or rollout uses it; one that is no longer wanted is unloaded only once it has been unwanted for
a grace period and no request on it is in flight, so requests that started on it finish on it.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True, slots=True)
class Demand:
    """What placement by traffic knows of one version.

    ``rate``: recent requests per second; ``last_used``: when a request last used it (the
    caller's clock); ``pinned``: a route needs it (a stable target or a rollout's candidate);
    ``saturated``: its replicas were past the spill depth lately.
    """

    rate: float = 0.0
    last_used: float = 0.0
    pinned: bool = False
    saturated: bool = False


def replicas_for(demand: Demand, hottest: float, replicas: int) -> int:
    """How many replicas a pinned version's traffic asks for: at least one, more in proportion
    to its rate against the hottest version's (all of them for the hottest), one more when its
    replicas were saturated."""
    share = math.ceil(replicas * demand.rate / hottest) if demand.rate > 0 < hottest else 1
    return max(1, min(replicas, share + demand.saturated))


def plan_by_traffic(
    demand: Mapping[str, Demand],
    loaded: Mapping[str, Set[str]],
    capacity: int,
    may_unload: Callable[[str, str], bool],
) -> list[Action]:
    """Actions that give every pinned version a replica set sized by its traffic while each
    replica in ``loaded`` (replica -> versions) holds at most ``capacity`` versions.

    A loaded version missing from ``demand`` counts as unpinned and never used.
    ``may_unload(replica, version)`` says whether the version may leave that replica now.
    Unpinned versions stay while there is room (a warm copy for a rollback) and go first under
    pressure, least recently used first; then copies beyond what a version's traffic asks for,
    then (only to place a version held nowhere) copies beyond a version's first. Copies that
    traffic no longer asks for go even without pressure, once the rate has halved. A pinned
    version is always placed: where nothing may be unloaded, a replica goes over capacity
    rather than leave a route without its version. Loads go only into room made by this
    plan's unloads, so unloads come first; a replica found over capacity is brought back under
    it, if need be over two passes (a copy elsewhere first, the unload on the next pass).
    """
    return _Placement(demand, loaded, capacity, may_unload).plan()


Victim = tuple[tuple[int, float], str]  # (rank, version): the lowest rank goes first


class _Placement:
    """One run of ``plan_by_traffic``: the replicas' holdings as the plan changes them."""

    def __init__(
        self,
        demand: Mapping[str, Demand],
        loaded: Mapping[str, Set[str]],
        capacity: int,
        may_unload: Callable[[str, str], bool],
    ) -> None:
        self.demand = demand
        self.loaded = loaded
        self.capacity = capacity
        self.may_unload = may_unload
        self.replicas = sorted(loaded)
        self.held = {r: set(loaded[r]) for r in self.replicas}
        self.pinned = sorted(
            (v for v, d in demand.items() if d.pinned), key=lambda v: (-demand[v].rate, v)
        )
        self.hottest = max((demand[v].rate for v in self.pinned), default=0.0)
        n = len(self.replicas)
        self.goal = {v: replicas_for(demand[v], self.hottest, n) for v in self.pinned}
        self.copies = {v: sum(v in h for h in self.held.values()) for v in self.pinned}
        # Each replica's share of the pinned versions' traffic, to spread new copies.
        self.weight = {r: sum(self._share(v) for v in sorted(self.held[r])) for r in self.replicas}

    def plan(self) -> list[Action]:
        for replica in self.replicas:
            self._trim(replica)
        for version in self.pinned:
            if not self.copies[version] and not self._add_somewhere(version, evict_below=1):
                self._add(self._least_full(self.replicas), version)
        # Growth waits until no replica is over capacity: it would take the room that the
        # copies made to relieve one are to fill.
        growing = self.pinned if all(self._room(r) >= 0 for r in self.replicas) else []
        for version in growing:
            while self.copies[version] < self.goal[version]:
                if not self._add_somewhere(version, evict_below=None):
                    break
        for version in self.pinned:
            self._shrink(version)
        unloads = [
            Action(Change.UNLOAD, r, v)
            for r in self.replicas
            for v in sorted(set(self.loaded[r]) - self.held[r])
        ]
        loads = [
            Action(Change.LOAD, r, v)
            for r in self.replicas
            for v in sorted(self.held[r] - set(self.loaded[r]))
        ]
        return unloads + loads

    def _share(self, version: str) -> float:
        goal = self.goal.get(version)
        return self.demand[version].rate / goal if goal else 0.0

    def _room(self, replica: str) -> int:
        return self.capacity - len(self.held[replica])

    def _least_full(self, replicas: list[str]) -> str:
        return min(replicas, key=lambda r: (len(self.held[r]), self.weight[r], r))

    def _add(self, replica: str, version: str) -> None:
        self.held[replica].add(version)
        self.copies[version] += 1
        self.weight[replica] += self._share(version)

    def _drop(self, replica: str, version: str) -> None:
        self.held[replica].discard(version)
        if version in self.copies:
            self.copies[version] -= 1
        self.weight[replica] -= self._share(version)

    def _victim(
        self, replica: str, evict_below: int | None
    ) -> tuple[tuple[int, float], str] | None:
        """The version to unload from ``replica`` to make room, with its rank (lowest first):
        an unpinned one by last use, then a copy beyond its version's goal by rate, then, with
        ``evict_below`` set, a copy beyond that many by rate."""
        best: Victim | None = None
        for version in self.held[replica]:
            if version not in self.copies:
                rank = (0, self.demand[version].last_used if version in self.demand else 0.0)
            elif not self._loaded_elsewhere(version, replica):
                continue
            elif self.copies[version] > self.goal[version]:
                rank = (1, self.demand[version].rate)
            elif evict_below is not None and self.copies[version] > evict_below:
                rank = (2, self.demand[version].rate)
            else:
                continue
            if (best is None or (rank, version) < (best[0], best[1])) and self.may_unload(
                replica, version
            ):
                best = (rank, version)
        return best

    def _add_somewhere(self, version: str, evict_below: int | None) -> bool:
        """Add a copy of ``version`` where there is room, or where an unload makes room."""
        options = [r for r in self.replicas if version not in self.held[r]]
        with_room = [r for r in options if self._room(r) > 0]
        if with_room:
            self._add(min(with_room, key=lambda r: (self.weight[r], len(self.held[r]), r)), version)
            return True
        ranked = []
        for replica in options:
            victim = self._victim(replica, evict_below)
            if victim is not None:
                ranked.append((victim[0], self.weight[replica], replica, victim[1]))
        if not ranked:
            return False
        _, _, replica, victim_version = min(ranked)
        self._drop(replica, victim_version)
        self._add(replica, version)
        return True

    def _shrink(self, version: str) -> None:
        """Unload copies its traffic no longer asks for, from the fullest replicas first. A
        copy stays until the rate that would justify it has halved, so a rate that wavers
        around a step does not load and unload the same copy pass after pass."""
        demand = self.demand[version]
        doubled = Demand(rate=2 * demand.rate, saturated=demand.saturated)
        keep = max(self.goal[version], replicas_for(doubled, self.hottest, len(self.replicas)))
        holders = sorted(
            (r for r in self.replicas if version in self.held[r] and version in self.loaded[r]),
            key=lambda r: (self._room(r), -self.weight[r], r),
        )
        for replica in holders:
            if self.copies[version] <= keep:
                return
            if self._loaded_elsewhere(version, replica) and self.may_unload(replica, version):
                self._drop(replica, version)

    def _loaded_elsewhere(self, version: str, replica: str) -> bool:
        """Whether a copy that stays is loaded already: unloads run before this plan's loads."""
        return any(
            version in self.held[other] and version in self.loaded[other]
            for other in self.replicas
            if other != replica
        )

    def _trim(self, replica: str) -> None:
        """Unload from a replica over capacity; a version held only there gets a copy on
        another replica first (where there is room or room can be made), so a later pass may
        unload it here."""
        while self._room(replica) < 0:
            victim = self._victim(replica, evict_below=1)
            if victim is None:
                break
            self._drop(replica, victim[1])
        sole = sorted(
            (v for v in self.held[replica] if self.copies.get(v) == 1),
            key=lambda v: (self.demand[v].rate, v),
        )
        for version in sole[: max(0, -self._room(replica))]:
            self._add_somewhere(version, evict_below=1)


class Traffic:
    """Each version's recent request rate, last use and last saturation, from running totals of
    requests started (times from the caller's clock). Rates decay with a half-life, so a
    version that stops being asked for shrinks back to one replica over a few half-lives; a
    saturated version counts as such for one half-life, so the copy it gained is not unloaded
    on the next pass and loaded again on the one after."""

    def __init__(self, half_life_s: float) -> None:
        self._half_life_s = half_life_s
        self._totals: dict[str, int] = {}
        self._rates: dict[str, float] = {}
        self._last_used: dict[str, float] = {}
        self._saturated_at: dict[str, float] = {}
        self._at = 0.0
        self._seen = False

    def update(
        self, totals: Mapping[str, int], busy: Set[str], saturated: Set[str], now: float
    ) -> None:
        """``totals``: requests started per version so far; ``busy``: versions with requests
        in flight now; ``saturated``: versions whose replicas were saturated since the last
        update."""
        elapsed = now - self._at if self._seen else 0.0
        kept = 0.5 ** (elapsed / self._half_life_s) if elapsed > 0 else 1.0
        for version in totals.keys() | self._rates.keys():
            started = totals.get(version, 0) - self._totals.get(version, 0)
            rate = self._rates.get(version, 0.0)
            if elapsed > 0:
                rate = kept * rate + (1 - kept) * started / elapsed
            self._rates[version] = rate
            if started > 0 or version in busy:
                self._last_used[version] = now
        for version in saturated:
            self._saturated_at[version] = now
        for version, at in list(self._saturated_at.items()):
            if now - at >= self._half_life_s:
                del self._saturated_at[version]
        self._totals = dict(totals)
        self._at, self._seen = now, True

    def demand(self, pinned: Set[str], present: Set[str]) -> dict[str, Demand]:
        """Demand of the pinned versions and of those loaded somewhere (``present``)."""
        return {
            version: Demand(
                rate=self._rates.get(version, 0.0),
                last_used=self._last_used.get(version, 0.0),
                pinned=version in pinned,
                saturated=version in self._saturated_at,
            )
            for version in pinned | present
        }
