"""The reviewer API over the review queue: list and inspect items, claim one under a lease,
keep the lease alive, and decide (approve, correct or reject).

A claim hands out a fencing token; heartbeats and decisions must carry it, so a reviewer whose
lease ran out (and whose item someone else claimed since) gets 409 instead of overwriting the
newer claimant's work. The reviewer recorded is the caller's key id. Every operation is one
the web UI shares (``service.review.service``); this module only translates HTTP, with the
bodies of ``service.review.schemas``.

The time every operation uses comes from the ``review_clock`` dependency (tests override it
through ``app.dependency_overrides`` to move leases tick by tick).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from service import clock
from service.api.deps import parts, require_roles
from service.audit.actor import api_actor
from service.auth import Principal, Role
from service.guard.tiers import Risk
from service.review import service
from service.review.model import MAX_INT, DecisionKind, ItemState
from service.review.schemas import (
    ClaimIn,
    ClaimOut,
    DecisionIn,
    DecisionOut,
    HeartbeatIn,
    HeartbeatOut,
    ItemDetailOut,
    ItemOut,
    StatsOut,
    UnparkOut,
)
from service.review.service import DecisionOrder, ReviewParts
from service.review.sla import SlaTargets, sla_targets
from service.review.visibility import UNPARK_ROLES, reviewer_of

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])


def review_parts(request: Request) -> ReviewParts:
    found: ReviewParts = parts(request)
    return found


REVIEW_ROLES = (Role.REVIEWER, Role.LEAD, Role.ADMIN)
ReviewerKey = Annotated[Principal, Depends(require_roles(*REVIEW_ROLES))]
UnparkKey = Annotated[Principal, Depends(require_roles(*UNPARK_ROLES))]


def review_clock() -> datetime:
    """The current time for queue operations (a dependency, so tests can replace it)."""
    return clock.now()


Now = Annotated[datetime, Depends(review_clock)]

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is not reviewer, lead or admin."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No review item has this id."},
}
STALE: dict[int | str, dict[str, Any]] = {
    409: {"description": "The claim token is not the item's current one, or its lease ran out."},
}


def sla_of(request: Request) -> SlaTargets:
    return sla_targets(review_parts(request).settings)


@router.get(
    "/items",
    summary="List review items",
    description=(
        "Items in queue order: those past their risk tier's target age (SLA) first, then the "
        "highest priority, then the oldest. A key limited to routes or tiers lists only those."
    ),
    response_model=list[ItemOut],
    responses={**AUTH_ERRORS, 400: {"description": "An unknown state or tier, or a bad bound."}},
)
async def list_items(
    request: Request,
    principal: ReviewerKey,
    now: Now,
    state: Annotated[ItemState | None, Query(description="Only items in this state.")] = None,
    route: Annotated[str | None, Query(description="Only items of this route.")] = None,
    reason: Annotated[str | None, Query(description="Only items queued for this.")] = None,
    tier: Annotated[Risk | None, Query(description="Only items of this risk tier.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many items.")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT, description="Skip this many items first.")] = 0,
) -> list[ItemOut]:
    items = await service.list_items(
        review_parts(request), principal, now, state=state, route=route, reason=reason, tier=tier,
        limit=limit, offset=offset,
    )  # fmt: skip
    sla = sla_of(request)
    return [ItemOut.of(item, sla, now) for item in items]


@router.get(
    "/items/{item_id}",
    summary="Get a review item",
    description=(
        "One item with its audit trail (decisions, votes, expired leases, parking) and, once "
        "both are in, its two reviewers' independent decisions. 404 for an item outside the "
        "key's routes or tiers."
    ),
    response_model=ItemDetailOut,
    responses={**AUTH_ERRORS, **NOT_FOUND},
)
async def get_item(
    item_id: str, request: Request, principal: ReviewerKey, now: Now
) -> ItemDetailOut:
    detail = await service.item_detail(review_parts(request), principal, item_id)
    return ItemDetailOut.of_detail(detail, sla_of(request), now)


@router.post(
    "/claim",
    summary="Claim the next review item",
    description=(
        "Claims the highest-priority, oldest claimable item (optionally of one route or "
        "reason) for the caller, under a lease of `lease_s` seconds (10 to 3600, default 300). "
        "Returns the item with its fencing token; 204 when nothing is claimable. Items whose "
        "lease ran out are returned to the queue first."
    ),
    response_model=ClaimOut,
    responses={
        **AUTH_ERRORS,
        204: {"description": "Nothing is claimable."},
        400: {"description": "`lease_s` out of bounds."},
    },
)
async def claim(body: ClaimIn, request: Request, principal: ReviewerKey, now: Now) -> Any:
    claimed = await service.claim(
        review_parts(request), principal, now, body.lease_s, route=body.route, reason=body.reason,
        tier=body.tier,
    )  # fmt: skip
    if claimed is None:
        return Response(status_code=204)
    return ClaimOut.of(claimed, sla_of(request), now)


@router.post(
    "/items/{item_id}/heartbeat",
    summary="Extend a claim",
    description="Extends the caller's live claim to now plus `lease_s` seconds (default 300).",
    response_model=HeartbeatOut,
    responses={**AUTH_ERRORS, **NOT_FOUND, **STALE},
)
async def heartbeat(
    item_id: str, body: HeartbeatIn, request: Request, principal: ReviewerKey, now: Now
) -> HeartbeatOut:
    lease_until = await service.heartbeat(
        review_parts(request), principal, item_id, body.token, now, body.lease_s
    )
    return HeartbeatOut(item_id=item_id, token=body.token, lease_until=lease_until)


@router.post(
    "/items/{item_id}/unpark",
    summary="Return a parked item to the queue",
    description=(
        "A parked item (its leases kept running out) goes back to `pending`, or to `disputed` "
        "when it already has both independent decisions and they differ; its count of run-out "
        "leases starts from zero again. Keys with role lead or admin, within their routes and "
        "tiers. Recorded in the item's history and the audit trail."
    ),
    response_model=UnparkOut,
    responses={
        401: AUTH_ERRORS[401],
        403: {"description": "The key's role is not lead or admin."},
        **NOT_FOUND,
        409: {"description": "The item is not parked."},
    },
)
async def unpark(item_id: str, request: Request, principal: UnparkKey, now: Now) -> UnparkOut:
    state = await service.unpark(
        review_parts(request), principal, item_id, now, api_actor(principal, request)
    )
    return UnparkOut(item_id=item_id, state=state)


@router.post(
    "/items/{item_id}/decision",
    summary="Decide a claimed review item",
    description=(
        "Records the decision on the caller's live claim: `approve` (nothing else), `correct` "
        "(with `corrected_answer`: a JSON value, or text holding one, that must follow the "
        "route's output schema when it has one; free text on a route reviewed without a "
        "schema) or `reject` (with `reason`). Sending the recorded decision again returns it "
        "unchanged; a different one gets 409."
    ),
    response_model=DecisionOut,
    responses={
        **AUTH_ERRORS,
        **NOT_FOUND,
        409: {"description": "The claim is stale, or the item was already decided differently."},
        422: {
            "description": "A corrected answer or reason is missing, not for this kind, or "
            "the corrected answer is not JSON or breaks the route's output schema."
        },
    },
)
async def decide(
    item_id: str, body: DecisionIn, request: Request, principal: ReviewerKey, now: Now
) -> DecisionOut:
    order = DecisionOrder(
        item_id, body.token, reviewer_of(principal), DecisionKind(body.kind), body.payload(), now,
        api_actor(principal, request),
    )  # fmt: skip
    decision = await service.decide(review_parts(request), order)
    return DecisionOut.of(decision)


@router.get(
    "/stats",
    summary="Review queue figures",
    description=(
        "Undecided items and live claims per route, the age of the oldest item waiting, "
        "how many items are parked; per risk tier the target age and the items past it; per "
        "route the QA estimate (how often reviewers changed an answer nobody escalated, with "
        "its 95 % Wilson interval) and the agreement of two reviewers' independent decisions "
        "(Cohen's kappa, field agreement on corrections), also per reviewer pair; per route and "
        "adapter version the calibration of its confidence against reviewers' decisions "
        "(expected calibration error, Brier score, a ten-bin reliability diagram), per answer "
        "and per field. A key "
        "limited to routes or tiers sees the figures of those items alone."
    ),
    response_model=StatsOut,
    responses=AUTH_ERRORS,
)
async def stats(
    request: Request,
    principal: ReviewerKey,
    now: Now,
    window_days: Annotated[
        float,
        Query(
            gt=0,
            le=3650,
            description="QA, agreement and calibration figures read items this recent.",
        ),
    ] = 30,
) -> StatsOut:
    depth, measured = await service.stats(
        review_parts(request), principal, now, timedelta(days=window_days)
    )
    return StatsOut.of(depth, sla_of(request), measured)
