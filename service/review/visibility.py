"""What a reviewer's key lets it see and do in the queue. Pure (over the queue's values).

A reviewer key may be limited to routes and to risk tiers (``loragate keys create --role
reviewer --route R --tier high``); it sees, lists and claims only those items. Leads and admins
also adjudicate: they claim disputed items (two reviewers disagreed). A reviewer never sees the
other reviewer's decision first: the independent decisions are shown once both are in.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.auth import Principal, Role
from service.review.queue import ReviewItemView, Scope, Vote

ADJUDICATORS = frozenset({Role.LEAD, Role.ADMIN})


def adjudicates(principal: Principal) -> bool:
    return principal.role in ADJUDICATORS


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
