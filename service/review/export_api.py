"""``POST /v1/reviews/export``: reviewers' decisions as chat JSONL training data (NDJSON);
``GET /v1/reviews/export``: the recorded snapshots (reads only).

The same export as ``loragate reviews export`` (see ``service.review.export``): approved and
corrected answers, optionally trusted unreviewed ones, redacted by default, split by content
hash. The snapshot is recorded (idempotently: its id is its content), audited, and named in the
``x-loragate-snapshot`` header, so an adapter trained on it can cite it as ``data_snapshot_id``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from service.api.deps import require_roles, store_parts
from service.api.params import iso_time
from service.audit.actor import api_actor
from service.auth import Principal, Role
from service.errors import PermissionDenied
from service.review.export import ExportFilters, export_and_record, list_snapshots
from service.review.visibility import export_scope, may_see_export

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
ReviewerKey = Annotated[Principal, Depends(require_roles(Role.REVIEWER, Role.LEAD, Role.ADMIN))]
SNAPSHOT_HEADER = "x-loragate-snapshot"

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-ndjson": {}},
        "description": 'One `{"messages": [...]}` example a line, the assistant\'s answer last.',
    },
    400: {"description": "since/until without a UTC offset, or a bad value."},
    401: {"description": "Missing or invalid API key."},
    403: {
        "description": "The key's role is not reviewer, lead or admin, or it is limited to "
        "routes and asked for another, or to risk tiers and asked for unreviewed answers."
    },
}


class SnapshotOut(BaseModel):
    id: str = Field(description="`ds-...`: what `adapters register --data-snapshot` names.")
    created_at: datetime = Field(description="When it was first recorded, in UTC, with offset.")
    created_by: str | None = Field(description="The key id that created it, or `cli`.")
    train_examples: int
    validation_examples: int
    manifest: dict[str, Any] = Field(description="Filters, counts and each file's sha256.")


class SnapshotListOut(BaseModel):
    object: str = "list"
    data: list[SnapshotOut] = Field(description="Newest first.")


@router.get(
    "/export",
    summary="List recorded training data snapshots",
    description="The snapshots exports recorded, newest first. Reads only: creating a "
    "snapshot is `POST /v1/reviews/export`. A key limited to routes or tiers lists only the "
    "snapshots of exports it could have made itself.",
    response_model=SnapshotListOut,
    responses={k: v for k, v in RESPONSES.items() if k != 200},
)
async def snapshots(
    request: Request,
    principal: ReviewerKey,
    limit: Annotated[int, Query(ge=1, le=1000, description="Snapshots to list.")] = 100,
) -> SnapshotListOut:
    async with store_parts(request).sessions() as session:
        found = await list_snapshots(session, limit)
    shown = [s for s in found if may_see_export(principal, s.manifest["filters"])]
    return SnapshotListOut(
        data=[SnapshotOut.model_validate(snapshot, from_attributes=True) for snapshot in shown]
    )


@router.post(
    "/export",
    summary="Export review decisions as training data",
    description="Records the snapshot (the same data again keeps the first record) and the "
    "audit event, and returns the chat JSONL that `loragate adapters train` accepts, as "
    "NDJSON. Counts, filters and sha256s are in the "
    "snapshot's manifest; its id is in `x-loragate-snapshot`. The filters are query "
    "parameters; the request has no body.",
    response_class=StreamingResponse,
    responses=RESPONSES,
)
async def export(
    request: Request,
    principal: ReviewerKey,
    route: Annotated[list[str] | None, Query(description="Only these routes.")] = None,
    since: Annotated[
        str | None,
        Query(description="Decided (unreviewed: requested) at or after: ISO 8601 with offset."),
    ] = None,
    until: Annotated[str | None, Query(description="... and before (ISO 8601).")] = None,
    include_unreviewed_above: Annotated[
        float | None,
        Query(ge=0, le=1, description="Also unreviewed answers at or above this confidence."),
    ] = None,
    split: Annotated[
        Literal["train", "validation", "all"], Query(description="Which part to return.")
    ] = "all",
    val_fraction: Annotated[float, Query(ge=0, lt=1, description="Share held out.")] = 0.1,
    seed: Annotated[int, Query(description="Changes which examples are held out.")] = 0,
    redact: Annotated[bool, Query(description="Mask e-mails, phones, long numbers.")] = True,
) -> StreamingResponse:
    routes, tiers = export_scope(principal, route)
    if tiers is not None and include_unreviewed_above is not None:
        raise PermissionDenied(
            "A key limited to risk tiers exports reviewed items only: unreviewed answers have "
            "no tier; leave out include_unreviewed_above."
        )
    filters = ExportFilters(
        routes=routes, tiers=tiers, since=iso_time(since, "since"),
        until=iso_time(until, "until"),
        include_unreviewed_above=include_unreviewed_above, val_fraction=val_fraction,
        seed=seed, redact=redact,
    )  # fmt: skip
    audit = api_actor(principal, request)
    recorded = await export_and_record(
        store_parts(request).sessions, filters, principal.key_id, audit
    )
    data = recorded.export
    counts = data.manifest["counts"]
    examples = counts["train"] + counts["validation"] if split == "all" else counts[split]
    headers = {SNAPSHOT_HEADER: data.snapshot_id, "x-loragate-examples": str(examples)}
    # Streamed from the temporary files, which are removed once the response is sent.
    return StreamingResponse(
        data.chunks(split), media_type="application/x-ndjson", headers=headers,
        background=BackgroundTask(data.discard),
    )  # fmt: skip
