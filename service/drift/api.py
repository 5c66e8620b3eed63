"""Drift monitoring for SREs: a route's drift report, and pinning its reference."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from service.api.deps import SRE_ROLES, require_roles
from service.api.params import iso_time
from service.audit.actor import api_actor
from service.auth import Principal
from service.drift.monitor import DriftMonitor
from service.drift.schemas import DriftOut, PinnedOut, ReferenceIn, ReferenceOut
from service.errors import InvalidRequest

router = APIRouter(prefix="/v1/admin/drift", tags=["drift"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Times without a UTC offset, `since` not before `until`, or a range "
        "holding too few records for a reference."
    },
    404: {"description": "No such route."},
}


def monitor(request: Request) -> DriftMonitor:
    found: DriftMonitor = request.app.state.drift
    return found


def utc(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidRequest(f"'{name}' needs a UTC offset, e.g. 2026-12-02T10:00:00Z.", param=name)
    return value


@router.get(
    "/{route}",
    summary="Drift of a route's current version",
    description=(
        "The model's features of the route's current version (prompt and completion tokens; "
        "with an output contract also confidence, escalations, schema validity and each "
        "categorical or number field of the answers; with reviews the reviewers' decisions), "
        "binned over the current window and over the version's reference, scored, and judged "
        "as a route: each feature's chi-square p-value is corrected across the route (Holm), "
        "and a feature over a band reads `warn` or `drift` only when its adjusted p-value is "
        "at most the route's false-alarm rate (LORAGATE_DRIFT_FALSE_ALARM_RATE, 1 %), so "
        "unchanged traffic flags a route in at most that share of windows. `insufficient` "
        "while a side has too few values; a reference not ready yet says how many records it "
        "holds and when it will be ready. Beside it, `service`: latency p95, time to first "
        "token p95, the 5xx share and the share of answers cut by a limit against the route's "
        "targets (`ok`, `breach`); they move with load and are never drift. The current window "
        "is the last LORAGATE_DRIFT_WINDOW_S seconds unless `since`/`until` say."
    ),
    response_model=DriftOut,
    responses=ERRORS,
)
async def status(
    route: str,
    request: Request,
    _: SreKey,
    since: Annotated[
        str | None, Query(description="Start of the current window (ISO 8601, UTC offset).")
    ] = None,
    until: Annotated[
        str | None, Query(description="End of the current window (default: now).")
    ] = None,
) -> DriftOut:
    window = iso_time(since, "since"), iso_time(until, "until")
    report = await monitor(request).report(route, *window)
    return DriftOut.of(report)


@router.put(
    "/{route}/reference",
    summary="Pin the reference of a route's current version",
    description=(
        "The route's records in [since, until), whichever versions served them, become the "
        "reference of its current version (their histograms are stored), in place of the "
        "automatic one: after a switch, the new version is held against what the route "
        "answered before. Refused (400) when the range holds fewer than "
        "LORAGATE_DRIFT_REFERENCE_MIN_SAMPLES records."
    ),
    response_model=PinnedOut,
    responses=ERRORS,
)
async def pin(route: str, request: Request, principal: SreKey, body: ReferenceIn) -> PinnedOut:
    since, until = utc(body.since, "since"), utc(body.until, "until")
    assert since is not None and until is not None
    actor = f"{principal.name} ({principal.key_id})"[-64:]
    audit = api_actor(principal, request)
    target, span = await monitor(request).pin(route, since, until, actor, audit)
    return PinnedOut(route=route, target=target, reference=ReferenceOut.of_reference(span))


@router.delete(
    "/{route}/reference",
    summary="Unpin the reference of a route's current version",
    description="The version goes back to its automatic reference. Idempotent.",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
)
async def unpin(route: str, request: Request, principal: SreKey) -> Response:
    await monitor(request).unpin(route, api_actor(principal, request))
    return Response(status_code=204)
