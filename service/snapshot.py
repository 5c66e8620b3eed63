"""The in-memory view each gateway replica serves from: routes and API keys.

Requests never read the database for these; a background loop reloads them every
``snapshot_refresh_s``. A key id that is not in the snapshot is looked up once in the
database, so a key created a moment ago works at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from service.auth import StoredKey, stored_key
from service.db import repositories

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteView:
    name: str
    pool: str
    target: str
    max_tokens_cap: int | None
    default_max_tokens: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    routes: Mapping[str, RouteView] = field(default_factory=lambda: MappingProxyType({}))
    keys: Mapping[str, StoredKey] = field(default_factory=lambda: MappingProxyType({}))


class SnapshotStore:
    def __init__(self, sessions: async_sessionmaker[Any], refresh_s: float) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self.current = Snapshot()
        self.loaded = False

    async def reload(self) -> None:
        async with self._sessions() as session:
            routes = await repositories.list_routes(session)
            keys = await repositories.active_keys(session)
        route_views = {
            r.name: RouteView(r.name, r.pool, r.target, r.max_tokens_cap, r.default_max_tokens)
            for r in routes
        }
        stored = {
            k.id: sk
            for k in keys
            if (sk := stored_key(k.id, k.name, k.role, k.secret_hash, k.allowed_routes))
        }
        self.current = Snapshot(MappingProxyType(route_views), MappingProxyType(stored))
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
