"""Clients read the result of an answer held for review (routes with `delivery: hold`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.api.deps import require_roles, store_parts
from service.auth import INFERENCE_ROLES, Principal, Role
from service.review.errors import ReviewItemNotFound
from service.review.model import ItemNotFound
from service.review.results import ReviewResult, result_for

router = APIRouter(prefix="/v1/review-results", tags=["reviews"])
AppKey = Annotated[Principal, Depends(require_roles(*INFERENCE_ROLES))]


@router.get(
    "/{review_id}",
    summary="The result of an answer held for review",
    description=(
        "For the key that made the request: `pending` until a reviewer decides, then the "
        "answer to use (`approved`: the model's, `corrected`: the reviewer's) or `rejected` "
        "with a reason. A route with a `callback_url` also gets this object posted."
    ),
    response_model=ReviewResult,
    responses={404: {"description": "No such review, or not one of this key's requests."}},
)
async def review_result(review_id: str, request: Request, principal: AppKey) -> ReviewResult:
    key_id = None if principal.role is Role.ADMIN else principal.key_id
    async with store_parts(request).sessions() as session:
        try:
            return await result_for(session, review_id, key_id)
        except ItemNotFound as exc:
            raise ReviewItemNotFound(f"No review '{review_id}' for this key.") from exc
