"""What an HTTP surface reads from the app: the parts the composition root put there, and the
role check of the admin APIs.

``create_app`` keeps its parts on ``app.state.gateway``. No surface names that class: each reads
``parts(request)`` as the narrow protocol of what it uses (``AuditParts``, ``RoutesParts``...),
and ``service.main`` checks that the parts satisfy every one of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import Request
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.auth import Authenticator, Principal, Role, require_role
from service.settings import Settings


class StoreParts(Protocol):
    """What a surface that reads and writes only the database uses."""

    @property
    def sessions(self) -> async_sessionmaker[Any]: ...

    @property
    def settings(self) -> Settings: ...


def parts(request: Request) -> Any:
    """The app's parts, to be read through the caller's own protocol."""
    return request.app.state.gateway


def store_parts(request: Request) -> StoreParts:
    parts_: StoreParts = parts(request)
    return parts_


def require_roles(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, if its key has one of ``roles``."""
    allowed = frozenset(roles)

    async def dependency(request: Request) -> Principal:
        keys: Authenticator = parts(request)
        principal = await keys.identify(request.headers.get("authorization"))
        require_role(principal, allowed)
        return principal

    return dependency


SRE_ROLES = (Role.SRE, Role.ADMIN)
