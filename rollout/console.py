"""The rollout console at ``/console``: server-rendered pages for SREs over every route's rollout.

``/console/rollouts`` lists every route with its stable target and latest rollout (phase,
weights, step); ``/console/rollouts/{route}`` shows that rollout as the JSON API's status does
(``rollout.api.RolloutOut``): each gate's latest result (verdict, figures, intervals where the
gates give them, the decision in a sentence), the per-arm figures, the current step judged now,
and the events with their reasons. Rollouts keep their last analysis, not every one: the
history over time is the events.

Any person's key (sre, admin, reviewer, lead) may sign in and read; the pause, resume, promote
and abort buttons are shown to, and their POSTs accepted from, the roles the API's commands
take (sre, admin) only: another role gets 403. A command runs the same control function as
``POST /v1/admin/rollouts/{route}/{command}`` (idempotent; 409 where the phase does not allow
it), audited the same way. Sign-in, sessions (cookie scoped to ``/console``), same-origin POSTs
and the Content-Security-Policy are the kit's (``service.web.pages``), as for the reviewer UI.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import async_sessionmaker

from rollout import store as rollout_store
from rollout.api import RolloutOut, actor_of, control_of
from rollout.core.machine import ACTIVE, RUNNING, Command, Phase, traffic
from service import clock
from service.api.deps import SRE_ROLES, parts
from service.audit.actor import api_actor
from service.auth import Authenticator, Principal, Role
from service.errors import GatewayError
from service.routes.snapshot import SnapshotStore
from service.settings import Settings
from service.web.pages import Pages, SignIn, read_form, redirect, same_origin

router = APIRouter(prefix="/console", include_in_schema=False)

VIEW_ROLES = frozenset({Role.SRE, Role.ADMIN, Role.REVIEWER, Role.LEAD})
COMMAND_ROLES = frozenset(SRE_ROLES)
SIGN_IN = SignIn("lg_console_session", "/console", VIEW_ROLES)
PAGES = Pages(Path(__file__).resolve().parent / "templates" / "console")
# The commands the console offers, with the phases each fits (the control refuses others: 409).
COMMANDS = {
    Command.PAUSE: RUNNING | {Phase.PENDING, Phase.EVALUATING},
    Command.RESUME: frozenset({Phase.PAUSED}),
    Command.PROMOTE: ACTIVE,
    Command.ABORT: ACTIVE,
}
NOTICES = {"signed-out": "Signed out.", **{c.value: f"{c.value.title()}: done." for c in COMMANDS}}


class ConsoleParts(Authenticator, Protocol):
    """What the console uses of the app: the database, settings, keys."""

    @property
    def sessions(self) -> async_sessionmaker[Any]: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def snapshot(self) -> SnapshotStore: ...


def console_parts(request: Request) -> ConsoleParts:
    found: ConsoleParts = parts(request)
    return found


async def signed_in(request: Request, now: datetime) -> Principal | None:
    gw = console_parts(request)

    async def lookup(key_id: str) -> Principal | None:
        stored = gw.snapshot.current.keys.get(key_id) or await gw.snapshot.find_key(key_id)
        return stored.principal if stored is not None else None

    return await SIGN_IN.principal(request, gw.sessions, lookup, now)


GATE_HEAD = ("gate", "verdict", "sentence", "detail")


def shown_value(value: Any) -> str:
    """A figure of the API's gate result as text: numbers to 4 significant digits, an interval
    (``{"low", "high"}``) as [low, high], other objects as name=value pairs."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if value.keys() == {"low", "high"}:
            return f"[{shown_value(value['low'])}, {shown_value(value['high'])}]"
        return ", ".join(f"{k}={shown_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(shown_value(v) for v in value)
    return str(value)


def gate_rows(gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gate result the API returns: its name, verdict and sentence, and every other field
    it carries (figures, intervals, samples...) as (name, text), whichever fields those are."""
    return [
        {
            "gate": g.get("gate"), "verdict": g.get("verdict"),
            "sentence": g.get("sentence") or g.get("detail") or "",
            "figures": [(k, shown_value(v)) for k, v in g.items() if k not in GATE_HEAD],
        }
        for g in gates
    ]  # fmt: skip


def refused(status: int, message: str, viewer: Principal | None = None) -> HTMLResponse:
    return PAGES.render("error.html", status, title="Refused", message=message, viewer=viewer)


# --- sign-in ---------------------------------------------------------------------------------


@router.get("")
async def home() -> Response:
    return redirect("/console/rollouts")


@router.get("/login")
async def login_form(request: Request) -> Response:
    return PAGES.render("login.html", notice=NOTICES.get(request.query_params.get("notice", "")))


@router.post("/login")
async def login(request: Request) -> Response:
    if not same_origin(request):
        return refused(403, "This form was not sent from this site.")
    gw = console_parts(request)
    key = (await read_form(request)).get("key", "").strip()
    try:
        principal = await SIGN_IN.check_key(gw, key)
    except GatewayError as exc:
        status = exc.status if exc.status in (401, 403) else 401
        return PAGES.render("login.html", status, error=exc.message)
    return await SIGN_IN.open(
        request, gw.sessions, principal, clock.now(), gw.settings.review_session_ttl_s,
        gw.settings.secure_cookies, "/console/rollouts",
    )  # fmt: skip


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not same_origin(request):
        return refused(403, "This form was not sent from this site.")
    then = redirect("/console/login", notice="signed-out")
    return await SIGN_IN.close(request, console_parts(request).sessions, then)


# --- the pages -------------------------------------------------------------------------------


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    viewer = await signed_in(request, clock.now())
    if viewer is None:
        return redirect("/console/login")
    gw = console_parts(request)
    async with gw.sessions() as session:
        latest = {r.route: r for r in await rollout_store.latest_per_route(session)}
    rows = []
    for name in sorted(gw.snapshot.current.routes.keys() | latest.keys()):
        route = gw.snapshot.current.routes.get(name)
        rollout = latest.get(name)
        weights = traffic(rollout.state, rollout.spec) if rollout is not None else None
        rows.append({"route": name, "target": route.target if route else None,
                     "rollout": rollout, "weights": weights})  # fmt: skip
    return PAGES.render("rollouts.html", rows=rows, viewer=viewer)


@router.get("/rollouts/{route}")
async def rollout_page(route: str, request: Request) -> Response:
    viewer = await signed_in(request, clock.now())
    if viewer is None:
        return redirect("/console/login")
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return await _rollout_page(request, route, viewer, notice=notice)


async def _rollout_page(
    request: Request, route: str, viewer: Principal, *, status: int = 200,
    error: str | None = None, notice: str | None = None,
) -> Response:  # fmt: skip
    control = control_of(request)
    try:
        rollout, events = await control.latest(route)
        analysis = await control.analyse(rollout) if rollout.state.active else None
    except GatewayError as exc:
        return PAGES.render("error.html", exc.status, title="Not found", message=exc.message,
                            viewer=viewer)  # fmt: skip
    shown = RolloutOut.of(rollout, events, analysis).model_dump(mode="json")
    commands = []
    if viewer.role in COMMAND_ROLES:
        commands = [c.value for c, phases in COMMANDS.items() if rollout.state.phase in phases]
    analysed = shown["analysis"]
    return PAGES.render(
        "rollout.html", status, rollout=shown, commands=commands, viewer=viewer, error=error,
        notice=notice, last=gate_rows(shown["last_verdicts"]),
        now_gates=gate_rows(analysed["gates"]) if analysed else None, shown_value=shown_value,
    )  # fmt: skip


@router.post("/rollouts/{route}/{name}")
async def run_command(route: str, name: str, request: Request) -> Response:
    if not same_origin(request):
        return refused(403, "This form was not sent from this site.")
    viewer = await signed_in(request, clock.now())
    if viewer is None:
        return redirect("/console/login")
    if viewer.role not in COMMAND_ROLES:
        return refused(403, f"A key with role '{viewer.role}' may not change rollouts.", viewer)
    if name not in {c.value for c in COMMANDS}:
        return refused(404, f"Unknown command '{name}'.", viewer)
    cmd = Command(name)
    reason = (await read_form(request)).get("reason", "").strip()[:2000]
    try:
        await control_of(request).command(
            route, cmd, actor_of(viewer), reason or f"{cmd.value} by {viewer.name} (console)",
            api_actor(viewer, request),
        )  # fmt: skip
    except GatewayError as exc:
        return await _rollout_page(request, route, viewer, status=exc.status, error=exc.message)
    return redirect(f"/console/rollouts/{route}", notice=cmd.value)
