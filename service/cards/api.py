"""The model card of an adapter version, as JSON or one HTML page (role sre or admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from service.api.deps import SRE_ROLES, require_roles, store_parts
from service.auth import Principal
from service.cards.card import drift_summary, model_card
from service.cards.page import render
from service.drift.monitor import DriftMonitor
from service.errors import GatewayError

router = APIRouter(prefix="/v1/admin/adapters", tags=["adapters"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]


@router.get(
    "/{version_id}/card",
    summary="An adapter version's model card",
    description="One page an auditor reads: the version and its changelog, its training data "
    "snapshot with the export's manifest and the training manifest, the evaluation runs it "
    "took part in (figures and paired verdicts), its rollouts with their last gate verdicts and "
    "history, the audit events on all of these (who registered, started and decided what), and "
    "the drift of each route serving it since its promotion. `format=html`: the same as one "
    "self-contained HTML page.",
    response_model=None,
    responses={
        200: {"description": "The card (JSON, or HTML with format=html)."},
        401: {"description": "Missing or invalid API key."},
        403: {"description": "The key's role is not sre or admin."},
        404: {"description": "No such adapter version."},
    },
)
async def card(
    version_id: str,
    request: Request,
    _: SreKey,
    format: Annotated[Literal["json", "html"], Query(description="json or html.")] = "json",
) -> JSONResponse | HTMLResponse:
    monitor: DriftMonitor = request.app.state.drift

    async def drift(route: str, since: datetime) -> dict[str, Any]:
        try:
            return drift_summary(await monitor.report(route, since=since))
        except GatewayError as error:  # e.g. a route removed since: say so on the card
            return {"status": "unavailable", "reason": error.message}

    found = await model_card(store_parts(request).sessions, drift, version_id)
    if format == "html":
        return HTMLResponse(render(found))
    return JSONResponse(found)
