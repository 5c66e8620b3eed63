"""``loragate rollout ...``: start, watch and steer rollouts through the running gateway."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.common import (
    KeyOption,
    UrlOption,
    call_gateway,
    columns,
    fail,
    gateway_url,
    settings_of,
    typed_path,
)

rollout_app = typer.Typer(
    help="Gated rollouts of adapter versions (shadow, canary, promote).", no_args_is_help=True
)
RouteArg = Annotated[str, typer.Argument(help="The route whose rollout to act on.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept in the event history.")]


# A watch stops at these: nothing changes any more without a person acting.
WATCH_STOPS = frozenset({"promoted", "rolled_back", "aborted", "paused"})
CLEAR_SCREEN = "\x1b[2J\x1b[H"
ARM_HEADER = ("arm", "samples", "errors", "p95", "valid", "escal.", "conf.", "agreement")


def _path(route: str, action: str = "") -> str:
    return f"/v1/admin/rollouts/{route}" + (f"/{action}" if action else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def duration(ms: float | None) -> str:
    """A latency in human units (``0.4 ms``, ``850 ms``, ``12.4 s``), never in e-notation."""
    if ms is None:
        return "-"
    if ms < 9.95:
        return f"{ms:.1f} ms"
    if ms < 999.5:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 99.95 else f"{seconds:.0f} s"


def _arm_row(arm: str, f: dict[str, Any]) -> tuple[str, ...]:
    agree = ", ".join(f"{k or '(whole)'} {_pct(v)}" for k, v in f["agreement_by_field"].items())
    return (
        arm, str(f["samples"]), _pct(f["error_rate"]), duration(f["latency_p95_ms"]),
        _pct(f["schema_valid_rate"]), _pct(f["escalation_rate"]), _score(f["confidence_mean"]),
        agree or "-",
    )  # fmt: skip


def _arms(figures: dict[str, Any]) -> list[str]:
    rows = [ARM_HEADER, *(_arm_row(arm, figures[arm]) for arm in ("stable", "candidate"))]
    return columns(rows, right=range(1, 7))


def _figures(status: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The figures part of the view, and the gate verdicts that go with them."""
    analysis = status.get("analysis")
    if analysis:
        head = f"window since {analysis['window_start']}: verdict {analysis['verdict']}"
        return [head, *_arms(analysis)], analysis["gates"]
    gates = status.get("last_verdicts", [])
    saved = status.get("last_figures")
    if not saved:
        return [], gates
    head = f"last analysis at {saved['analysed_at']} (window since {saved['window_start']})"
    return [head, *_arms(saved)], gates


def _phases(event: dict[str, Any]) -> str:
    """``shadow -> canary``, or the one phase of an event that changed none (``created``)."""
    before, after = event["from_phase"], event["to_phase"]
    return after if before == after else f"{before} -> {after}"


def _events(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return []
    rows = [(e["at"], e["kind"], _phases(e), f"by {e['actor']}: {e['reason']}") for e in events]
    return ["events:", *columns(rows)]


def _gates(gates: list[dict[str, Any]]) -> list[str]:
    """One line per gate: its name, its verdict and the decision in a sentence."""
    rows = [(f"gate {g['gate']}", g["verdict"], g.get("sentence") or g["detail"]) for g in gates]
    return columns(rows)


def render(status: dict[str, Any]) -> str:
    """The status view: phase, step, weights, per-arm figures, gate verdicts, events."""
    lines = [
        f"rollout {status['id']} on {status['route']}: {status['stable']} -> {status['candidate']}",
        f"phase {status['phase']}"
        + (f" (from {status['paused_phase']})" if status.get("paused_phase") else "")
        + f", step {status['step'] + 1} of {status['steps']}, canary {status['canary_weight']}%"
        + f", shadow {status['shadow_percent']}%, failures {status['failures']}"
        + f", inconclusive {status['inconclusive']}"
        + _alpha(status),
    ]
    if status.get("evaluation_run"):
        lines.append(
            f"evaluation {status['evaluation_run']} (loragate eval runs show "
            f"{status['evaluation_run']})"
        )
    figures, gates = _figures(status)
    lines += figures
    lines += _gates(gates)
    lines += _events(status.get("events", []))
    return "\n".join(lines)


def _alpha(status: dict[str, Any]) -> str:
    alpha = status.get("spec", {}).get("alpha")
    return f", alpha {alpha:g} (every decision of the rollout)" if alpha is not None else ""


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _wait(seconds: float) -> None:
    time.sleep(seconds)


def watch(fetch: Callable[[], dict[str, Any]], interval_s: float) -> None:
    """Draw the status every ``interval_s`` until the rollout is paused or has ended."""
    tty = _stdout_is_tty()
    for draw in itertools.count():
        current = fetch()
        if tty:
            typer.echo(CLEAR_SCREEN, nl=False, color=True)  # click strips it unless told
        elif draw:
            typer.echo("")  # draws written to a file or a pipe stay apart, in order
        typer.echo(render(current))
        if current["phase"] in WATCH_STOPS:
            return
        _wait(interval_s)


@rollout_app.command("start")
def start(
    ctx: typer.Context,
    route: RouteArg,
    candidate: Annotated[str, typer.Argument(help="The adapter version NAME@N to roll out.")],
    key: KeyOption,
    spec: Annotated[
        Path | None,
        typer.Option(help="JSON file of the rollout spec (steps, gates, thresholds, limits)."),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Start rolling a version out on a route: shadow, then canary steps, then promote."""
    settings = settings_of(ctx)
    body: dict[str, Any] = {}
    if spec is not None:
        try:
            body = json.loads(typed_path(settings, spec).read_text())
        except (OSError, ValueError) as exc:
            raise fail(f"cannot read the spec {spec}: {exc}") from exc
        if not isinstance(body, dict):
            raise fail(f"the spec {spec} must hold a JSON object")
    body["candidate"] = candidate
    base = gateway_url(settings, url)
    typer.echo(render(_dict(call_gateway(base, key, "POST", _path(route), body))))


@rollout_app.command("status")
def status(
    ctx: typer.Context,
    route: RouteArg,
    key: KeyOption,
    url: UrlOption = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--watch", help="Redraw until the rollout is paused, promoted, rolled back or aborted."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between redraws with --watch.")
    ] = 5.0,
) -> None:
    """Phase, step, weights, per-arm figures, each gate's verdict with its interval and samples
    in a sentence, and the event history."""

    base = gateway_url(settings_of(ctx), url)

    def fetch() -> dict[str, Any]:
        return _dict(call_gateway(base, key, "GET", _path(route), None))

    if follow:
        watch(fetch, interval)
    else:
        typer.echo(render(fetch()))


def _command(action: str, doc: str) -> None:
    def run(
        ctx: typer.Context,
        route: RouteArg,
        key: KeyOption,
        reason: ReasonOption = "",
        url: UrlOption = None,
    ) -> None:
        body = {"reason": reason} if reason else None
        base = gateway_url(settings_of(ctx), url)
        typer.echo(render(_dict(call_gateway(base, key, "POST", _path(route, action), body))))

    run.__doc__ = doc
    rollout_app.command(action)(run)


def _dict(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise fail("the gateway sent an unexpected answer")
    return payload


_command("pause", "Pause a rollout: weights stay, analysis stops.")
_command("resume", "Resume a paused rollout; the step's window starts again.")
_command("promote", "Promote the candidate now, skipping the remaining steps.")
_command("abort", "Abort: all traffic back to the stable version at once.")
_command("retry", "Retry a rolled back or aborted rollout from its first step.")
