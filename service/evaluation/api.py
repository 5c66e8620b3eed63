"""Evaluation packs for SREs: create a version from cases and/or reviewed items, list, read."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import SRE_ROLES, require_roles, store_parts
from service.api.params import iso_time
from service.audit.actor import api_actor
from service.auth import Principal
from service.evaluation.cases import MAX_CASES, NAME_PATTERN, Case, CaseError, case_of
from service.evaluation.errors import PackInvalid
from service.evaluation.from_reviews import ReviewWindow
from service.evaluation.service import PackRequest, make_pack
from service.evaluation.store import PackInfo, list_packs, read_pack

router = APIRouter(prefix="/v1/admin/eval", tags=["evaluation"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A bad name, reference or case (the message says which), or no route."},
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key's role is not sre or admin."},
}


class FromReviewsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(default=None, description="Decided at or after (ISO, with offset).")
    until: str | None = Field(default=None, description="Decided before (ISO, with offset).")


class CreatePackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200, description="The route the pack tests.")
    name: str = Field(pattern=NAME_PATTERN, description="Pack name; versions are `name@1`, ...")
    cases: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_CASES,
        description='Cases as JSONL lines would give them: `{"messages": [...], "expected": '
        'ANSWER, "kind": "held_out|injection|formatting|hard|refusal", "slices": {...}, '
        '"fields": [...]}`, or a training example whose last assistant message is the answer.',
    )
    from_reviews: FromReviewsIn | None = Field(
        default=None,
        description="Also take the route's approved and corrected review items (disputed ones "
        "as `hard`), leaving out those a recorded training export already took.",
    )


class PackOut(BaseModel):
    id: str = Field(description="`route/name@version`.")
    route: str
    name: str
    version: int
    sha256: str = Field(description="Over the cases' canonical JSON, sorted.")
    created_at: datetime
    created_by: str | None
    cases: int
    kinds: dict[str, int] = Field(description="Cases per kind.")
    sources: dict[str, Any] = Field(description="What was taken from where, what was left out.")

    @classmethod
    def of(cls, pack: PackInfo) -> PackOut:
        return cls.model_validate(pack, from_attributes=True)


class CreatedPackOut(PackOut):
    created: bool = Field(description="False: the newest version already held these cases.")


class PackListOut(BaseModel):
    object: str = "list"
    data: list[PackOut]


class CaseOut(BaseModel):
    messages: list[dict[str, str]]
    expected: str
    kind: str
    slices: dict[str, str]
    fields: list[str] | None
    review_item_id: str | None


class PackWithCasesOut(PackOut):
    data: list[CaseOut] = Field(description="The cases, in the pack's order.")


def _cases(raw: list[dict[str, Any]]) -> list[Case]:
    cases = []
    for i, item in enumerate(raw):
        try:
            cases.append(case_of(item))
        except CaseError as exc:
            raise PackInvalid(f"cases[{i}]: {exc}", param=f"cases[{i}]") from None
    return cases


@router.post(
    "/packs",
    status_code=201,
    summary="Create an evaluation pack version",
    description="Writes `route/name@N`, immutable, from the given cases and/or the route's "
    "reviewed items. The same cases as the newest version of that name return it with 200. "
    "Its cases are held out of every later training export of the route (exact and near "
    "duplicates of their inputs).",
    response_model=CreatedPackOut,
    responses={
        **ERRORS,
        200: {"description": "The newest version of that name holds these cases: that one."},
        409: {"description": "Another version of that name was created at the same moment."},
    },
)
async def create(
    body: CreatePackIn, request: Request, response: Response, principal: SreKey
) -> CreatedPackOut:
    window = None
    if body.from_reviews is not None:
        window = ReviewWindow(
            since=iso_time(body.from_reviews.since, "from_reviews.since"),
            until=iso_time(body.from_reviews.until, "from_reviews.until"),
        )
    outcome = await make_pack(
        store_parts(request).sessions,
        PackRequest(
            route=body.route, name=body.name, cases=_cases(body.cases), from_reviews=window,
            created_by=principal.key_id, audit=api_actor(principal, request),
        ),
    )  # fmt: skip
    if not outcome.created.created:
        response.status_code = 200
    pack = PackOut.of(outcome.created.pack).model_dump()
    return CreatedPackOut(**pack, created=outcome.created.created)


@router.get(
    "/packs",
    summary="List evaluation packs",
    description="Every version of every pack, by route, name and version.",
    response_model=PackListOut,
    responses=ERRORS,
)
async def packs(
    request: Request,
    _: SreKey,
    route: Annotated[str | None, Query(description="Only this route's packs.")] = None,
) -> PackListOut:
    async with store_parts(request).sessions() as session:
        found = await list_packs(session, route)
    return PackListOut(data=[PackOut.of(pack) for pack in found])


@router.get(
    "/packs/{route}/{version}",
    summary="One evaluation pack with its cases",
    description="`version` is `name@N`: the pack `route/name@N`.",
    response_model=PackWithCasesOut,
    responses={**ERRORS, 404: {"description": "No such pack version."}},
)
async def pack(route: str, version: str, request: Request, _: SreKey) -> PackWithCasesOut:
    async with store_parts(request).sessions() as session:
        info, cases = await read_pack(session, f"{route}/{version}")
    shown = [
        CaseOut(
            messages=[dict(m) for m in case.messages], expected=case.expected,
            kind=case.kind.value, slices=dict(case.slices),
            fields=list(case.fields) if case.fields is not None else None,
            review_item_id=case.review_item_id,
        )
        for case in cases
    ]  # fmt: skip
    return PackWithCasesOut(**PackOut.of(info).model_dump(), data=shown)
