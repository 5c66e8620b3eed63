"""What a gateway replica serves from, as plain values: routes, adapter versions and API keys.

Pure: the hot path (request rules, the pipeline) reads these; ``snapshot`` builds them from the
database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from rollout.core.split import Split
from service.guard.route_guard import RouteContract
from service.keys.credentials import StoredKey


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    pool: str
    target: str
    max_tokens_cap: int | None
    default_max_tokens: int | None
    split: Split | None = None  # the route's active rollout, as traffic
    contract: RouteContract | None = None  # the output schema and review policy


@dataclass(frozen=True, slots=True)
class AdapterView:
    id: str  # name@version, the name engines serve it under
    pool: str
    store_path: str
    sha256: str = ""  # the adapter's content digest (traces name the exact weights)


@dataclass(frozen=True, slots=True)
class Snapshot:
    routes: Mapping[str, RouteView] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, StoredKey] = field(default_factory=lambda: MappingProxyType({}))
    adapters: Mapping[str, AdapterView] = field(default_factory=lambda: MappingProxyType({}))
    # Pool -> versions an offline evaluation is answering with now: wanted like a route's.
    evaluating: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))

    def wanted_adapters(self, pool: str) -> frozenset[str]:
        """Versions that routes of ``pool`` serve or roll out, or that an evaluation on it
        answers with: they must be on all its replicas."""
        wanted = set(self.evaluating.get(pool, ()))
        for route in self.routes.values():
            if route.pool == pool:
                wanted.add(route.target)
                if route.split is not None:
                    wanted.add(route.split.candidate)
        return frozenset(wanted & self.adapters.keys())


class Served(Protocol):
    """What a reader of the route snapshot holds: the one being served now (``SnapshotStore``)."""

    @property
    def current(self) -> Snapshot: ...
