"""Loads the in-memory view each gateway replica serves from: routes, rollouts and API keys.

Requests never read the database for these. A background loop looks every
``snapshot_refresh_s`` and reloads when they may have changed: on SQLite when the database's
change count moved (``ConfigVersionReader``); on PostgreSQL only while the change listener is down,
for while it is up it calls ``wake`` at once for every change (the database's triggers notify,
whoever writes). A key id that is not in the snapshot is looked up once in the database, so a
key created a moment ago works at once, and a key found so is kept until the next reload (which
loads it anyway); ``key_lookups`` rations those lookups so that made-up keys cannot turn into a
query each. An id refused a lookup (the budget spent, or found unknown before) asks the loop to
look for changes at once and waits for that look: on SQLite it reads the change count and
reloads if it moved, on PostgreSQL it applies the changes already heard. So a key created while
made-up keys spend the budget is still served, at once on SQLite and once its change is heard
on PostgreSQL. The view's values are in ``view``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics
from rollout.core.split import Split
from service.db import repositories
from service.db.config_version import ConfigVersionReader
from service.db.models import AdapterVersion, ApiKey, Route
from service.guard.route_guard import RouteContract
from service.guard.tiers import DEFAULT_RISK
from service.keys import store as key_store
from service.keys.credentials import StoredKey, stored_key
from service.keys.lookups import KeyLookups, Outcome
from service.limits.quota import BadLimits
from service.routes.view import AdapterView, RouteView, Snapshot

log = logging.getLogger(__name__)

# Looks that refused key ids ask for start at least this far apart: a flood of made-up keys
# gets one change-count read per gap, not one per request.
LOOK_GAP_S = 0.02
# The longest a refused key id waits for its look: longer than any healthy reload; past it the
# database is in trouble, and the key is refused as before.
LOOK_WAIT_S = 5.0

# Per route: the (schema, policy, risk) a contract was built from, and the contract.
Contracts = dict[str, tuple[tuple[Any, Any, str], RouteContract]]


def route_view(
    route: Route, split: Split | None, previous: Contracts, built: Contracts
) -> RouteView:
    """``previous`` holds the contracts of the last reload: a schema's whole check costs
    milliseconds on the event loop, so an unchanged contract is not built again."""
    contract = None
    if (
        route.output_schema is not None
        or route.review_policy is not None
        or route.risk != DEFAULT_RISK
    ):
        source = (route.output_schema, route.review_policy, route.risk)
        known = previous.get(route.name)
        if known is not None and known[0] == source:
            contract = known[1]
        else:
            contract = RouteContract.build(route.output_schema, route.review_policy, route.risk)
        built[route.name] = (source, contract)
    return RouteView(
        route.name, route.pool, route.target, route.max_tokens_cap, route.default_max_tokens,
        split, contract,
    )  # fmt: skip


def usable_key(row: ApiKey) -> StoredKey | None:
    """The key as requests see it; a key whose stored limits cannot be read is left out (and
    so refused) rather than served without them."""
    try:
        return stored_key(
            row.id, row.name, row.role, row.secret_hash, row.allowed_routes, row.limits,
            allowed_tiers=row.allowed_tiers,
        )  # fmt: skip
    except BadLimits as exc:
        log.error("key lg-%s is refused: its limits cannot be read: %s", row.id, exc)
        return None


# Reads the traffic each route's active rollout takes now (``rollout.store.active_splits``).
SplitsLoader = Callable[[AsyncSession], Awaitable[dict[str, Split]]]
# Reads, per pool, the versions running evaluations answer with (``runs.evaluating``).
EvaluatingLoader = Callable[[AsyncSession], Awaitable[dict[str, frozenset[str]]]]


class SnapshotStore:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        refresh_s: float,
        *,
        splits: SplitsLoader,
        evaluating: EvaluatingLoader | None = None,
        lookups: KeyLookups | None = None,
        metrics: Metrics | None = None,
        config_version: ConfigVersionReader | None = None,
        listening: asyncio.Event | None = None,
    ) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self._splits = splits
        self._evaluating = evaluating
        self._config_version = config_version
        self._listening = listening
        self._loaded_version: int | None = None
        self._lookups = lookups or KeyLookups(20.0, 10_000, time.monotonic)
        self._metrics = metrics
        self._contracts: Contracts = {}
        self.current = Snapshot()
        self.loaded = False
        # Called with (old, new) after each reload, e.g. to place newly wanted adapters at once.
        self.on_reload: list[Callable[[Snapshot, Snapshot], None]] = []
        self._wake = asyncio.Event()  # set by wake() and by _looked_for_changes()
        self._woken = False
        # Keys a lookup found since the last reload, and the reloads installed so far: a lookup
        # that overlapped a reload may have read a key the reload saw revoked.
        self._found: dict[str, StoredKey] = {}
        self._reloads = 0
        # Looks asked for by refused key ids, and the last such ask a finished look covers.
        self._asks = 0
        self._answered = 0
        self._looked = asyncio.Event()
        self._last_asked_look = -LOOK_GAP_S
        self._looking = False  # run() is going: someone answers the asks
        # One reload at a time: one that began before a change committed must not install
        # its older view after one that began later.
        self._reloading = asyncio.Lock()

    def wake(self) -> None:
        """Reload now rather than at the next interval. Calls during a reload coalesce into
        one more reload after it."""
        self._woken = True
        self._wake.set()

    async def reload(self, version: int | None = None) -> None:
        """Load everything again. ``version``: the change count the caller read just before."""
        async with self._reloading:
            if version is None and self._config_version is not None:
                version = await self._config_version.read()
            await self._reload()
            # Read before the queries: a commit landing during them shows as a change later.
            self._loaded_version = version

    def close(self) -> None:
        if self._config_version is not None:
            self._config_version.close()

    async def _reload(self) -> None:
        async with self._sessions() as session:
            routes = await repositories.list_routes(session)
            keys = await key_store.active_keys(session)
            versions = (await session.scalars(select(AdapterVersion))).all()
            splits = await self._splits(session)
            evaluating = await self._evaluating(session) if self._evaluating else {}
        built: Contracts = {}
        route_views = {
            r.name: route_view(r, splits.get(r.name), self._contracts, built) for r in routes
        }
        self._contracts = built
        stored = {k.id: sk for k in keys if (sk := usable_key(k))}
        adapters = {v.id: AdapterView(v.id, v.pool, v.store_path, v.sha256) for v in versions}
        old = self.current
        self.current = Snapshot(
            MappingProxyType(route_views), MappingProxyType(stored), MappingProxyType(adapters),
            MappingProxyType(evaluating),
        )  # fmt: skip
        self._reloads += 1
        self._found.clear()
        self._lookups.forget()
        for listener in self.on_reload:
            listener(old, self.current)
        self.loaded = True

    async def find_key(self, key_id: str) -> StoredKey | None:
        found = self.current.keys.get(key_id) or self._found.get(key_id)
        if found is not None:
            return found
        outcome = self._lookups.decide(key_id)
        if outcome is not Outcome.LOOK_UP:
            if await self._looked_for_changes():
                found = self.current.keys.get(key_id)
            self._count("loaded" if found is not None else outcome.value)
            return found
        reloads = self._reloads
        async with self._sessions() as session:
            row = await key_store.get_active_key(session, key_id)
        if row is None:
            self._lookups.found_unknown(key_id)
            self._count("unknown")
            return None
        self._count("found")
        found = usable_key(row)
        if found is not None and reloads == self._reloads:
            self._found[key_id] = found
        return found

    async def _looked_for_changes(self) -> bool:
        """Ask the refresh loop to look for changes committed until now, and wait (at most
        ``LOOK_WAIT_S``) until it has, and reloaded if they touch the snapshot."""
        if not self._looking:
            return False
        self._asks += 1
        wanted = self._asks
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LOOK_WAIT_S):
                while self._answered < wanted:
                    await self._looked.wait()
        return self._answered >= wanted

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.key_lookups.labels(outcome).inc()

    async def run(self) -> None:
        self._looking = True
        try:
            await self._refresh()
        finally:
            self._looking = False

    async def _refresh(self) -> None:
        failed = False  # the last reload failed: the next tick tries again, whatever changed
        while True:
            # asyncio.timeout, not wait_for: see AdapterReconciler.run.
            ticked = False
            try:
                async with asyncio.timeout(self._refresh_s):
                    await self._wake.wait()
            except TimeoutError:
                ticked = True
            if not ticked and not self._woken:  # only refused key ids asked
                await self._space_asked_looks()
            woken, self._woken = self._woken, False
            self._wake.clear()
            asked = self._asks
            try:
                version = await self._config_version.read() if self._config_version else None
                changed = self._may_have_changed(version) if ticked else self._moved(version)
                if woken or (failed and ticked) or changed:
                    await self.reload(version)
                    failed = False
            except Exception:
                # Keep serving the last good snapshot; the failure is logged with its traceback.
                failed = True
                log.exception("snapshot refresh failed; serving the previous snapshot")
            self._answer(asked)

    async def _space_asked_looks(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_asked_look + LOOK_GAP_S - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_asked_look = loop.time()

    def _answer(self, asked: int) -> None:
        self._answered = asked
        self._looked.set()
        self._looked = asyncio.Event()

    def _moved(self, version: int | None) -> bool:
        """Between ticks only a change count that moved is a change (PostgreSQL has none: its
        changes arrive as wakes)."""
        return version is not None and version != self._loaded_version

    def _may_have_changed(self, version: int | None) -> bool:
        if self._config_version is not None:
            return version != self._loaded_version
        return self._listening is None or not self._listening.is_set()
