"""Which adapter version a route may be switched or rolled out to."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import AdapterVersion, Route
from service.errors import AdapterNotFound, InvalidRequest, RouteNotFound


async def get_route(session: AsyncSession, name: str) -> Route:
    route = await session.get(Route, name)
    if route is None:
        raise RouteNotFound(f"The route '{name}' does not exist.")
    return route


async def version_for(session: AsyncSession, route: Route, version_id: str) -> AdapterVersion:
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
