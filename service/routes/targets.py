"""Routes in the database, read as plain values, and which version a route may be switched to."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from adapters.errors import AdapterNotFound
from service.clock import as_utc
from service.db import repositories
from service.db.models import AdapterVersion, Route
from service.errors import InvalidRequest, RouteNotFound


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    pool: str
    target: str  # the base model's name or an adapter version `name@N`
    max_tokens_cap: int | None
    default_max_tokens: int | None
    description: str
    updated_at: datetime  # UTC
    risk: str = "medium"  # the route's risk tier: low | medium | high | critical


def info(route: Route) -> RouteInfo:
    return RouteInfo(
        route.name, route.pool, route.target, route.max_tokens_cap, route.default_max_tokens,
        route.description, as_utc(route.updated_at), route.risk,
    )  # fmt: skip


async def route_row(session: AsyncSession, name: str) -> Route:
    route = await session.get(Route, name)
    if route is None:
        raise RouteNotFound(f"The route '{name}' does not exist.")
    return route


async def get_route(session: AsyncSession, name: str) -> RouteInfo:
    return info(await route_row(session, name))


async def list_routes(session: AsyncSession) -> list[RouteInfo]:
    return [info(r) for r in await repositories.list_routes(session)]


async def version_for(session: AsyncSession, route: RouteInfo, version_id: str) -> AdapterVersion:
    """The registered version ``version_id``, if it was registered for the route's pool."""
    version = await session.get(AdapterVersion, version_id)
    if version is None:
        raise AdapterNotFound(f"No adapter version '{version_id}'.")
    if version.pool != route.pool:
        raise InvalidRequest(
            f"'{version_id}' was registered for pool '{version.pool}', "
            f"the route serves from pool '{route.pool}'."
        )
    return version
