"""What a reviewer's key lets it see and do in the queue. Pure (over the queue's values).

A reviewer key may be limited to routes and to risk tiers (``loragate keys create --role
reviewer --route R --tier high``); it sees, lists and claims only those items. Leads and admins
also adjudicate: they claim disputed items (two reviewers disagreed), and unpark items whose
leases kept running out. A reviewer never sees the other reviewer's decision first: the
independent decisions are shown once both are in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.auth import Principal, Role
from service.errors import PermissionDenied
from service.review.model import ReviewItemView, Scope, Vote

ADJUDICATORS = frozenset({Role.LEAD, Role.ADMIN})
UNPARK_ROLES = (Role.LEAD, Role.ADMIN)


def reviewer_of(principal: Principal) -> str:
    """The reviewer id a key's claims and decisions are recorded under."""
    return principal.key_id


def adjudicates(principal: Principal) -> bool:
    return principal.role in ADJUDICATORS


def may_unpark(principal: Principal) -> bool:
    return principal.role in UNPARK_ROLES


def scope_of(
    principal: Principal, *, route: str | None = None, reason: str | None = None,
    tier: str | None = None,
) -> Scope:  # fmt: skip
    """The key's limits, plus the filters asked for."""
    return Scope(principal.allowed_routes, principal.allowed_tiers, route, reason, tier)


def may_see(principal: Principal, item: ReviewItemView) -> bool:
    return principal.may_review(item.route, item.risk)


def shown_votes(item: ReviewItemView, votes: Sequence[Vote]) -> list[Vote]:
    """The independent decisions, once all are in (disputed, adjudicated or decided)."""
    return list(votes) if item.votes >= item.reviews_needed else []


def export_scope(
    principal: Principal, asked: Sequence[str] | None
) -> tuple[list[str] | None, list[str] | None]:
    """(routes, tiers) a key may export: the routes asked for, each of which it must be allowed,
    or all of its own; and its risk tiers (None: no limit)."""
    tiers = sorted(principal.allowed_tiers) if principal.allowed_tiers is not None else None
    if principal.allowed_routes is None:
        return (list(asked) if asked else None), tiers
    outside = sorted(set(asked or ()) - principal.allowed_routes)
    if outside:
        raise PermissionDenied(f"This key may not export route '{outside[0]}'.")
    return sorted(asked or principal.allowed_routes), tiers


def may_see_export(principal: Principal, filters: Mapping[str, Any]) -> bool:
    """Whether the key could have made an export with these filters (a snapshot's manifest)."""
    routes, tiers = filters.get("routes"), filters.get("tiers")
    if principal.allowed_routes is not None and (
        routes is None or not set(routes) <= principal.allowed_routes
    ):
        return False
    return principal.allowed_tiers is None or (
        tiers is not None and set(tiers) <= principal.allowed_tiers
    )
