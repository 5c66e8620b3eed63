"""The reviewer web UI at ``/review``: server-rendered pages over the review queue.

Sign-in, sessions, same-origin POSTs and the Content-Security-Policy are those of every page
for people (``service.web.pages``): the reviewer pastes their API key once (roles reviewer,
lead or admin), the HttpOnly, SameSite=Strict session cookie is scoped to ``/review``, and a
POST from another origin is refused with 403.

The pages share the JSON API's clock dependency (``service.review.api``) and its operations
(``service.review.service``: the same visibility rule, the same check of a corrected answer
against the route's output schema, the same error messages). The pages are the templates in
``service/review/templates/``. Model output is untrusted: the templates autoescape everything.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.api.deps import parts
from service.audit.actor import api_actor
from service.auth import Authenticator, Principal
from service.errors import AuthenticationFailed, GatewayError, PermissionDenied
from service.guard.tiers import Risk
from service.review import service, shown
from service.review.api import REVIEW_ROLES, Now
from service.review.errors import ReviewDecisionInvalid, ReviewItemNotFound
from service.review.model import MAX_INT, DecisionKind, ItemState, Outcome, ReviewItemView
from service.review.service import DecisionOrder, ReviewParts
from service.review.sla import sla_targets
from service.review.stats import QUALITY_WINDOW
from service.review.visibility import may_unpark, reviewer_of
from service.web.pages import Pages, SignIn, read_form, redirect, same_origin

router = APIRouter(prefix="/review", include_in_schema=False)

SIGN_IN = SignIn("lg_review_session", "/review", frozenset(REVIEW_ROLES))
QUEUE_LIMIT = 200
TIERS = tuple(t.value for t in Risk)

NOTICES = {
    "approve": "Approved.",
    "voted": "Decision recorded; a second reviewer decides independently.",
    "disputed": "Recorded; it differs from the first reviewer's: an adjudicator decides.",
    "correct": "Correction saved.",
    "reject": "Rejected.",
    "empty": "Nothing to claim right now.",
    "unparked-pending": "Unparked: the item is back in the queue.",
    "unparked-disputed": "Unparked: the item waits for an adjudicator again.",
    "signed-out": "Signed out.",
}

PAGES = Pages(Path(__file__).resolve().parent / "templates")


class UiParts(ReviewParts, Authenticator, Protocol):
    """What the pages use: the review workflows' parts, and who a key belongs to."""


def ui_parts(request: Request) -> UiParts:
    found: UiParts = parts(request)
    return found


def _to_login() -> RedirectResponse:
    return redirect("/review/login")


async def _signed_in(request: Request, now: datetime) -> Principal | None:
    """The reviewer of a live session whose key is still active and allowed."""
    gw = ui_parts(request)

    async def lookup(key_id: str) -> Principal | None:
        stored = gw.snapshot.current.keys.get(key_id) or await gw.snapshot.find_key(key_id)
        return stored.principal if stored is not None else None

    return await SIGN_IN.principal(request, gw.sessions, lookup, now)


def _forbidden() -> HTMLResponse:
    return PAGES.render(
        "error.html", 403, title="Refused", message="This form was not sent from this site."
    )


async def _poster(request: Request, now: datetime) -> Principal | Response:
    """The signed-in reviewer behind a form posted from this site, else the answer to give."""
    if not same_origin(request):
        return _forbidden()
    principal = await _signed_in(request, now)
    return principal if principal is not None else _to_login()


def _claim_token(form: dict[str, str]) -> int | None:
    """The claim token a form carries, None when it carries none that could be valid."""
    try:
        token = int(form.get("token", ""))
    except ValueError:
        return None
    return token if 0 <= token <= MAX_INT else None


def _blank_to_none(value: str | None) -> str | None:
    return value if value else None


# --- sign-in ---------------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request) -> Response:
    return PAGES.render("login.html", notice=NOTICES.get(request.query_params.get("notice", "")))


@router.post("/login")
async def login(request: Request, now: Now) -> Response:
    if not same_origin(request):
        return _forbidden()
    key = (await read_form(request)).get("key", "").strip()
    gw = ui_parts(request)
    try:
        principal = await SIGN_IN.check_key(gw, key)
    except GatewayError as exc:
        return PAGES.render("login.html", exc.status if exc.status in (401, 403) else 401,
                       error=exc.message)  # fmt: skip
    settings = gw.settings
    return await SIGN_IN.open(
        request, gw.sessions, principal, now, settings.review_session_ttl_s,
        settings.secure_cookies, "/review",
    )  # fmt: skip


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not same_origin(request):
        return _forbidden()
    then = redirect("/review/login", notice="signed-out")
    return await SIGN_IN.close(request, ui_parts(request).sessions, then)


# --- the queue -------------------------------------------------------------------------------


@router.get("")
async def queue_page(request: Request, now: Now) -> Response:
    principal = await _signed_in(request, now)
    if principal is None:
        return _to_login()
    params = request.query_params
    route = params.get("route", "").strip()
    reason = params.get("reason", "").strip()
    state = params.get("state", "").strip()
    tier = params.get("tier", "").strip()
    error = None
    if state and state not in {s.value for s in ItemState}:
        error = f"Unknown state '{state}'."
        state = ""
    if tier and tier not in TIERS:
        error = f"Unknown risk tier '{tier}'."
        tier = ""
    gw = ui_parts(request)
    items = await service.list_items(
        gw, principal, now, state=state or None, route=route or None, reason=reason or None,
        tier=tier or None, limit=QUEUE_LIMIT,
    )  # fmt: skip
    figures = await service.figures(gw, principal, now, QUALITY_WINDOW)
    sla = sla_targets(gw.settings)
    rows = [
        {"item": item, "age": shown.age(item.created_at, now),
         "low": shown.is_low(item.confidence), "overdue": sla.is_late(item, now)}
        for item in items
    ]  # fmt: skip
    return PAGES.render(
        "queue.html", error=error, notice=NOTICES.get(params.get("notice", "")),
        rows=rows, route=route, reason=reason, state=state, tier=tier, tiers=TIERS,
        states=[s.value for s in ItemState], reviewer=principal, overdue=figures.overdue,
        targets={t: shown.age_of(sla.target_s(t)) for t in TIERS}, quality=figures.quality,
        calibration=figures.calibration,
    )  # fmt: skip


@router.post("/claim")
async def claim(request: Request, now: Now) -> Response:
    principal = await _poster(request, now)
    if not isinstance(principal, Principal):
        return principal
    form = await read_form(request)
    route = _blank_to_none(form.get("route", "").strip())
    reason = _blank_to_none(form.get("reason", "").strip())
    tier = _blank_to_none(form.get("tier", "").strip())
    if tier is not None and tier not in TIERS:
        tier = None
    gw = ui_parts(request)
    claimed = await service.claim(
        gw, principal, now, gw.settings.review_ui_lease_s, route=route, reason=reason, tier=tier
    )
    if claimed is None:
        return redirect(
            "/review", notice="empty", route=route or "", reason=reason or "", tier=tier or ""
        )
    return redirect(f"/review/items/{claimed.item.id}")


# --- one item --------------------------------------------------------------------------------


def _holds_claim(item: ReviewItemView, principal: Principal, now: datetime) -> bool:
    return (
        item.state is ItemState.CLAIMED
        and item.claimed_by == reviewer_of(principal)
        and item.lease_until is not None
        and item.lease_until >= now
    )


async def _item_page(
    request: Request, principal: Principal, item_id: str, now: datetime, *,
    status: int = 200, error: str | None = None, draft: str | None = None,
    reject_reason: str = "", notice: str | None = None,
) -> Response:  # fmt: skip
    gw = ui_parts(request)
    try:
        detail = await service.item_detail(gw, principal, item_id)
    except ReviewItemNotFound as exc:
        return PAGES.render("error.html", exc.status, title="Not found", message=exc.message)
    item = detail.item
    messages, raw_request = shown.messages(item.request_body)
    fields = sorted((item.field_confidence or {}).items())
    answer = shown.pretty(item.answer)
    return PAGES.render(
        "item.html", status, item=item, messages=messages, raw_request=raw_request,
        answer=answer, draft=draft if draft is not None else answer,
        reject_reason=reject_reason,
        fields=[{"pointer": p, "score": s, "low": shown.is_low(s)} for p, s in fields],
        overall_low=shown.is_low(item.confidence),
        schema_errors=[shown.error_text(e) for e in item.schema_errors or []],
        history=detail.history, holds=_holds_claim(item, principal, now), error=error,
        reviewer=principal, votes=detail.votes, notice=notice,
        may_unpark=may_unpark(principal) and item.state is ItemState.PARKED,
        heartbeat_ms=int(gw.settings.review_ui_lease_s * 1000 / 3),
        overdue=sla_targets(gw.settings).is_late(item, now),
    )  # fmt: skip


@router.get("/items/{item_id}")
async def item_page(item_id: str, request: Request, now: Now) -> Response:
    principal = await _signed_in(request, now)
    if principal is None:
        return _to_login()
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return await _item_page(request, principal, item_id, now, notice=notice)


@router.post("/items/{item_id}/heartbeat")
async def heartbeat(item_id: str, request: Request, now: Now) -> Response:
    """Renew the signed-in reviewer's claim (the open item's page calls this); JSON, with the
    gateway's error envelope on refusal (409: the claim is no longer theirs)."""
    if not same_origin(request):
        raise PermissionDenied("This request was not sent from this site.")
    principal = await _signed_in(request, now)
    if principal is None:
        raise AuthenticationFailed("Your review session has ended; sign in again.")
    token = _claim_token(await read_form(request))
    if token is None:
        raise ReviewDecisionInvalid("The request carries no claim token.", param="token")
    gw = ui_parts(request)
    lease_until = await service.heartbeat(
        gw, principal, item_id, token, now, gw.settings.review_ui_lease_s
    )
    body = {"item_id": item_id, "token": token, "lease_until": lease_until.isoformat(),
            "lease_until_text": shown.lease_text(lease_until)}  # fmt: skip
    return Response(orjson.dumps(body), media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


@router.post("/items/{item_id}/unpark")
async def unpark(item_id: str, request: Request, now: Now) -> Response:
    principal = await _poster(request, now)
    if not isinstance(principal, Principal):
        return principal
    if not may_unpark(principal):
        return PAGES.render("error.html", 403, title="Refused",
                       message="Only a lead or an admin can unpark an item.")  # fmt: skip
    try:
        state = await service.unpark(
            ui_parts(request), principal, item_id, now, api_actor(principal, request)
        )
    except GatewayError as exc:
        return await _item_page(request, principal, item_id, now, status=exc.status,
                                error=exc.message)  # fmt: skip
    return redirect(f"/review/items/{item_id}", notice=f"unparked-{state.value}")


@router.post("/items/{item_id}/decision")
async def decide(item_id: str, request: Request, now: Now) -> Response:
    principal = await _poster(request, now)
    if not isinstance(principal, Principal):
        return principal
    form = await read_form(request)
    kind = form.get("kind", "")
    corrected = form.get("corrected_answer")
    reason = form.get("reason", "")

    async def refused(exc: GatewayError) -> Response:
        return await _item_page(
            request, principal, item_id, now, status=exc.status, error=exc.message,
            draft=corrected, reject_reason=reason,
        )  # fmt: skip

    token = _claim_token(form)
    if token is None:
        return await refused(ReviewDecisionInvalid("The form carries no claim token."))
    if kind not in ("approve", "correct", "reject"):
        return await refused(ReviewDecisionInvalid(f"Unknown decision '{kind}'."))
    payload = {"approve": None, "correct": corrected, "reject": reason}[kind]
    order = DecisionOrder(
        item_id, token, reviewer_of(principal), DecisionKind(kind), payload, now,
        api_actor(principal, request),
    )  # fmt: skip
    try:
        decision = await service.decide(ui_parts(request), order)
    except GatewayError as exc:
        return await refused(exc)
    if decision.outcome is not Outcome.DECIDED:
        return redirect("/review", notice=decision.outcome.value)
    return redirect("/review", notice=kind)
