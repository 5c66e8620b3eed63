"""Who a request acts as: a key's principal and role, and the role check every surface uses.

The key format, its hashing and parsing are in ``service.keys.credentials``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from service.errors import AuthenticationFailed, PermissionDenied
from service.limits.quota import KeyLimits


class Role(StrEnum):
    APP = "app"
    SRE = "sre"
    REVIEWER = "reviewer"
    LEAD = "lead"  # a reviewer who also adjudicates two reviewers' disagreements
    ADMIN = "admin"


INFERENCE_ROLES = frozenset({Role.APP, Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role
    allowed_routes: frozenset[str] | None
    limits: KeyLimits | None = None
    # A reviewer key limited to the review items of these risk tiers (None: every tier).
    allowed_tiers: frozenset[str] | None = None

    def may_use_route(self, route: str) -> bool:
        return self.allowed_routes is None or route in self.allowed_routes

    def may_review(self, route: str, risk: str) -> bool:
        """Whether the key's route and tier limits let it see a review item."""
        return self.may_use_route(route) and (
            self.allowed_tiers is None or risk in self.allowed_tiers
        )


def require_role(principal: Principal, allowed: frozenset[Role]) -> None:
    if principal.role not in allowed:
        raise PermissionDenied(f"A key with role '{principal.role}' may not call this endpoint.")


class Authenticator(Protocol):
    """Who a bearer key belongs to: what every surface needs to know of keys (the composition
    root hands in the gateway's, which reads its route snapshot first)."""

    async def identify(self, authorization: str | None) -> Principal:
        """The key's principal; raises ``AuthenticationFailed`` for a missing or unknown key."""
        ...

    async def caller(self, authorization: str | None) -> Principal | AuthenticationFailed:
        """The principal, or the refusal to answer (counted, never recorded)."""
        ...
