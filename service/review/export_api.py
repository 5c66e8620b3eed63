"""``GET /v1/reviews/export``: reviewers' decisions as chat JSONL training data (NDJSON).

The same export as ``loragate reviews export`` (see ``service.review.export``): approved and
corrected answers, optionally trusted unreviewed ones, redacted by default, split by content
hash. The snapshot is recorded (idempotently: its id is its content) and named in the
``x-loragate-snapshot`` header, so an adapter trained on it can cite it as ``data_snapshot_id``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import gateway, require_roles
from service.auth import Principal, Role
from service.errors import InvalidRequest
from service.review.export import ExportFilters, export_and_record

router = APIRouter(prefix="/v1/reviews", tags=["reviews"])
ReviewerKey = Annotated[Principal, Depends(require_roles(Role.REVIEWER, Role.ADMIN))]
SNAPSHOT_HEADER = "x-loragate-snapshot"
CHUNK_LINES = 256

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-ndjson": {}},
        "description": 'One `{"messages": [...]}` example a line, the assistant\'s answer last.',
    },
    400: {"description": "since/until without a UTC offset, or a bad value."},
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is neither reviewer nor admin."},
}


def _chunks(lines: list[str]) -> Iterator[bytes]:
    for start in range(0, len(lines), CHUNK_LINES):
        yield "".join(f"{line}\n" for line in lines[start : start + CHUNK_LINES]).encode()


@router.get(
    "/export",
    summary="Export review decisions as training data",
    description="Chat JSONL that `loragate adapters train` accepts, as NDJSON. Counts, "
    "filters and sha256s are in the snapshot's manifest; its id is in `x-loragate-snapshot`.",
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
    filters = ExportFilters(
        routes=route, since=_iso_time("since", since), until=_iso_time("until", until),
        include_unreviewed_above=include_unreviewed_above, val_fraction=val_fraction,
        seed=seed, redact=redact,
    )  # fmt: skip
    data = (await export_and_record(gateway(request).sessions, filters, principal.key_id)).export
    lines = {"train": data.train_lines, "validation": data.val_lines, "all": data.all_lines}[split]
    headers = {SNAPSHOT_HEADER: data.snapshot_id, "x-loragate-examples": str(len(lines))}
    return StreamingResponse(_chunks(lines), media_type="application/x-ndjson", headers=headers)


def _iso_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 time with its offset; numbers (read as Unix times by pydantic) are refused."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"{name} must be an ISO 8601 time with a UTC offset, e.g. 2026-12-01T00:00:00Z",
            param=name,
        ) from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name} needs a UTC offset", param=name)
    return parsed
