"""The route switch: check a target, place it on every replica, point the route at it.

An SRE switches a route with ``switch`` (the routes API). A rollout uses the same steps: it
checks and places its candidate before any traffic reaches it, and points the route at it when
it is promoted, in the transaction that saves the promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import clock
from service.audit.actor import Actor
from service.audit.events import record_event
from service.db.models import Rollout
from service.engine.client import EngineClient
from service.engine.reconciler import AdapterReconciler
from service.errors import RolloutConflict
from service.routes.snapshot import SnapshotStore
from service.routes.targets import RouteInfo, get_route, info, route_row, version_for


@dataclass(frozen=True, slots=True)
class Target:
    """A target checked for a route: its pool's base model, or a version registered for it."""

    route: str
    pool: str
    id: str  # the base model's name or an adapter version `name@N`
    store_path: str | None = None  # where the version's files are; None for the base model


async def check_target(
    session: AsyncSession, route: RouteInfo, wanted: str, *, base_model: str | None = None
) -> Target:
    """``wanted`` for ``route``: ``base`` or ``base_model`` (when given) names the base model."""
    if base_model is not None and wanted in ("base", base_model):
        return Target(route.name, route.pool, base_model)
    version = await version_for(session, route, wanted)
    return Target(route.name, route.pool, version.id, version.store_path)


async def place(target: Target, engines: EngineClient, reconciler: AdapterReconciler) -> None:
    """Load the target on every replica of its pool and check each generates with it, or raise.

    Talks to engines: call it with no database session open.
    """
    if target.store_path is not None:
        await reconciler.place(engines.pool(target.pool), target.id, target.store_path)


async def point(session: AsyncSession, route_name: str, target: str, now: datetime) -> RouteInfo:
    """Point the route at ``target`` in the caller's transaction (no change if it already is)."""
    route = await route_row(session, route_name)
    if route.target != target:
        route.target = target
        route.updated_at = now
    return info(route)


async def switch(
    sessions: async_sessionmaker[Any],
    engines: EngineClient,
    reconciler: AdapterReconciler,
    snapshot: SnapshotStore,
    route_name: str,
    wanted: str,
    actor: Actor | None = None,
) -> RouteInfo:
    """Switch a route that has no active rollout to ``wanted``, once every replica serves it;
    a change made for ``actor`` is audited in its transaction."""
    async with sessions() as session:
        route = await get_route(session, route_name)
        if await session.scalar(select(Rollout.id).where(Rollout.active_route == route_name)):
            raise RolloutConflict(
                f"The route '{route_name}' has an active rollout; promote or abort it first."
            )
        base_model = engines.pool(route.pool).base_model
        target = await check_target(session, route, wanted, base_model=base_model)
    await place(target, engines, reconciler)
    async with sessions.begin() as session:
        before = (await route_row(session, route_name)).target
        switched = await point(session, route_name, target.id, clock.now())
        if actor is not None and before != switched.target:
            await record_event(
                session, actor, "route.set_target", f"route:{route_name}",
                before={"target": before}, after={"target": switched.target},
            )  # fmt: skip
    await snapshot.reload()
    return switched
