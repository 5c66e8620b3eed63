"""Access to the app's Gateway from a request, and role checks for the admin APIs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from service.auth import Principal, Role, require_role
from service.gateway.parts import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def require_roles(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, if its key has one of ``roles``."""
    allowed = frozenset(roles)

    async def dependency(request: Request) -> Principal:
        principal = await gateway(request).identify(request.headers.get("authorization"))
        require_role(principal, allowed)
        return principal

    return dependency


SRE_ROLES = (Role.SRE, Role.ADMIN)
