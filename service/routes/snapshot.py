"""Loads the in-memory view each gateway replica serves from: routes, rollouts and API keys.

Requests never read the database for these; a background loop reloads them every
``snapshot_refresh_s``. A key id that is not in the snapshot is looked up once in the
database, so a key created a moment ago works at once. The view's values are in ``view``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from rollout import store as rollout_store
from rollout.core.machine import traffic
from rollout.core.split import Split
from service.auth import StoredKey, stored_key
from service.db import repositories
from service.db.models import AdapterVersion, Route
from service.guard.route_guard import RouteContract
from service.routes.view import AdapterView, RouteView, Snapshot

log = logging.getLogger(__name__)


def route_view(route: Route, split: Split | None) -> RouteView:
    contract = None
    if route.output_schema is not None or route.review_policy is not None:
        contract = RouteContract.build(route.output_schema, route.review_policy)
    return RouteView(
        route.name, route.pool, route.target, route.max_tokens_cap, route.default_max_tokens,
        split, contract,
    )  # fmt: skip


def split_of(rollout: rollout_store.StoredRollout) -> Split:
    """The traffic an active rollout takes now (none yet while pending)."""
    now = traffic(rollout.state, rollout.spec)
    return Split(rollout.id, rollout.candidate, now.canary_weight, now.shadow_percent)


class SnapshotStore:
    def __init__(self, sessions: async_sessionmaker[Any], refresh_s: float) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self.current = Snapshot()
        self.loaded = False
        # Called with (old, new) after each reload, e.g. to place newly wanted adapters at once.
        self.on_reload: list[Callable[[Snapshot, Snapshot], None]] = []

    async def reload(self) -> None:
        async with self._sessions() as session:
            routes = await repositories.list_routes(session)
            keys = await repositories.active_keys(session)
            versions = (await session.scalars(select(AdapterVersion))).all()
            rollouts = await rollout_store.active(session)
        splits = {r.route: split_of(r) for r in rollouts}
        route_views = {r.name: route_view(r, splits.get(r.name)) for r in routes}
        stored = {
            k.id: sk
            for k in keys
            if (sk := stored_key(k.id, k.name, k.role, k.secret_hash, k.allowed_routes))
        }
        adapters = {v.id: AdapterView(v.id, v.pool, v.store_path) for v in versions}
        old = self.current
        self.current = Snapshot(
            MappingProxyType(route_views), MappingProxyType(stored), MappingProxyType(adapters)
        )
        for listener in self.on_reload:
            listener(old, self.current)
        self.loaded = True

    async def find_key(self, key_id: str) -> StoredKey | None:
        found = self.current.keys.get(key_id)
        if found is not None:
            return found
        async with self._sessions() as session:
            row = await repositories.get_active_key(session, key_id)
        if row is None:
            return None
        return stored_key(row.id, row.name, row.role, row.secret_hash, row.allowed_routes)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.reload()
            except Exception:
                # Keep serving the last good snapshot; the failure is logged with its traceback.
                log.exception("snapshot refresh failed; serving the previous snapshot")
