"""``GET /v1/admin/audit``: the audit trail, read-only (no endpoint changes or deletes an event)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from service.api.deps import SRE_ROLES, require_roles, store_parts
from service.api.params import iso_time
from service.audit.chain import Problem, Verdict
from service.audit.store import AuditFilters, StoredEvent, list_events, verify_chain
from service.auth import Principal

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]
MAX_LIMIT = 1000

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A bad filter: a time without a UTC offset, a limit out of range."},
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is neither sre nor admin."},
}


class AuditEventOut(BaseModel):
    id: int = Field(description="Grows with every event; the cursor pages by it.")
    at: datetime
    actor: str = Field(description="The key id that made the change, or `cli`.")
    actor_role: str | None = Field(description="The key's role; null for the CLI.")
    os_user: str | None = Field(description="The OS user who ran the CLI command.")
    action: str = Field(description="What was done, `domain.verb`, e.g. `key.revoke`.")
    object: str = Field(description="What it was done to, `kind:id`, e.g. `route:ticket-triage`.")
    before: dict[str, Any] | None = Field(description="The object's summary before the change.")
    after: dict[str, Any] | None = Field(description="... and after it.")
    request_id: str | None = Field(
        description="The API request's id (its `x-request-id` header when sent)."
    )
    client: str | None = Field(description="The client's address.")
    prev_hash: str = Field(description="The hash of the event before it in the chain.")
    hash: str = Field(description="SHA-256 (or HMAC-SHA256) over `prev_hash` and the event.")

    @classmethod
    def of(cls, event: StoredEvent) -> AuditEventOut:
        return cls.model_validate(event, from_attributes=True)


class AuditPageOut(BaseModel):
    object: str = "list"
    data: list[AuditEventOut] = Field(description="Newest first.")
    next_cursor: int | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


@router.get(
    "",
    summary="The audit trail",
    description=(
        "Every change made through the admin, SRE and reviewer APIs and the CLI (keys, routes, "
        "adapters, rollout commands, review decisions, exports, drift references), newest "
        "first. Filters combine; page with `cursor`. Events are append-only: no endpoint "
        "changes or deletes them, and the database refuses to."
    ),
    response_model=AuditPageOut,
    responses=ERRORS,
)
async def audit_events(
    request: Request,
    _: SreKey,
    since: Annotated[str | None, Query(description="At or after (ISO 8601, offset).")] = None,
    until: Annotated[str | None, Query(description="Before (ISO 8601, offset).")] = None,
    actor: Annotated[str | None, Query(max_length=64, description="A key id, or `cli`.")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. `rollout.abort`.")] = None,
    object: Annotated[
        str | None, Query(max_length=300, description="e.g. `key:3f2a9c01b7d4`.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Events per page.")] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, description="`next_cursor` of the previous page.")
    ] = None,
) -> AuditPageOut:
    filters = AuditFilters(
        since=iso_time(since, "since"), until=iso_time(until, "until"), actor=actor, action=action,
        object=object, cursor=cursor, limit=limit,
    )  # fmt: skip
    async with store_parts(request).sessions() as session:
        page = await list_events(session, filters)
    return AuditPageOut(
        data=[AuditEventOut.of(e) for e in page.events], next_cursor=page.next_cursor
    )


class ChainHeadOut(BaseModel):
    last_id: int = Field(description="The newest event's id, as the chain head row names it.")
    hash: str


class ChainBreakOut(BaseModel):
    event_id: int | None = Field(description="The first broken link; null: the head row.")
    problem: Problem = Field(
        description="`hash_mismatch`: the event was edited; `prev_hash_mismatch`: events were "
        "removed or inserted before it; `head_mismatch`: the newest events were removed; "
        "`unsigned`: a signing key is set but the newest events are not signed with it."
    )
    detail: str


class ChainVerdictOut(BaseModel):
    intact: bool
    checked: int = Field(description="Events walked, oldest to newest.")
    first_id: int | None
    last_id: int | None
    head: ChainHeadOut | None
    broken: ChainBreakOut | None

    @classmethod
    def of(cls, verdict: Verdict) -> ChainVerdictOut:
        return cls.model_validate(
            {"intact": verdict.intact, "checked": verdict.checked, "first_id": verdict.first_id,
             "last_id": verdict.last_id, "head": verdict.head, "broken": verdict.broken},
            from_attributes=True,
        )  # fmt: skip


@router.get(
    "/verify",
    summary="Verify the audit trail's hash chain",
    description=(
        "Walks every event oldest to newest (as `loragate audit verify`) and names the first "
        "broken link. `intact` is false when an event was edited, removed or inserted outside "
        "the application, or the newest were removed."
    ),
    response_model=ChainVerdictOut,
    responses={k: v for k, v in ERRORS.items() if k != 400},
)
async def audit_verify(request: Request, _: SreKey) -> ChainVerdictOut:
    gw = store_parts(request)
    key = gw.settings.audit_signing_key.get_secret_value().encode()
    async with gw.sessions() as session:
        verdict = await verify_chain(session, key)
    return ChainVerdictOut.of(verdict)
