"""``loragate rollout ...``: start, watch and steer rollouts through the running gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli_http import KeyOption, UrlOption, call_gateway, fail

rollout_app = typer.Typer(
    help="Gated rollouts of adapter versions (shadow, canary, promote).", no_args_is_help=True
)
RouteArg = Annotated[str, typer.Argument(help="The route whose rollout to act on.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; kept in the event history.")]


def _path(route: str, action: str = "") -> str:
    return f"/v1/admin/rollouts/{route}" + (f"/{action}" if action else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3g}{unit}"


def render(status: dict[str, Any]) -> str:
    """The status view: phase, step, weights, per-arm figures, gate verdicts, events."""
    lines = [
        f"rollout {status['id']} on {status['route']}: {status['stable']} -> {status['candidate']}",
        f"phase {status['phase']}"
        + (f" (from {status['paused_phase']})" if status.get("paused_phase") else "")
        + f", step {status['step'] + 1} of {status['steps']}, canary {status['canary_weight']}%"
        + f", shadow {status['shadow_percent']}%, failures {status['failures']}"
        + f", inconclusive {status['inconclusive']}",
    ]
    analysis = status.get("analysis")
    if analysis:
        lines.append(f"window since {analysis['window_start']}: verdict {analysis['verdict']}")
        lines.append(f"  {'arm':<10}{'samples':>8}{'errors':>9}{'p95':>10}{'valid':>8}"
                     f"{'escal.':>8}{'conf.':>7}  agreement")  # fmt: skip
        for arm in ("stable", "candidate"):
            f = analysis[arm]
            agree = ", ".join(
                f"{k or '(whole)'} {_pct(v)}" for k, v in f["agreement_by_field"].items()
            )
            lines.append(
                f"  {arm:<10}{f['samples']:>8}{_pct(f['error_rate']):>9}"
                f"{_num(f['latency_p95_ms'], 'ms'):>10}{_pct(f['schema_valid_rate']):>8}"
                f"{_pct(f['escalation_rate']):>8}{_num(f['confidence_mean']):>7}  {agree or '-'}"
            )
        gates = analysis["gates"]
    else:
        gates = status.get("last_verdicts", [])
    for gate in gates:
        lines.append(f"  gate {gate['gate']:<20}{gate['verdict']:<14}{gate['detail']}")
    if status.get("events"):
        lines.append("events:")
        for event in status["events"]:
            lines.append(
                f"  {event['at']}  {event['kind']:<16}{event['from_phase']} -> "
                f"{event['to_phase']}  by {event['actor']}: {event['reason']}"
            )
    return "\n".join(lines)


@rollout_app.command("start")
def start(
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
    body: dict[str, Any] = {}
    if spec is not None:
        try:
            body = json.loads(spec.read_text())
        except (OSError, ValueError) as exc:
            raise fail(f"cannot read the spec {spec}: {exc}") from exc
        if not isinstance(body, dict):
            raise fail(f"the spec {spec} must hold a JSON object")
    body["candidate"] = candidate
    typer.echo(render(_dict(call_gateway("POST", url, key, _path(route), body))))


@rollout_app.command("status")
def status(route: RouteArg, key: KeyOption, url: UrlOption = None) -> None:
    """Phase, step, weights, per-arm figures, each gate's verdict and the event history."""
    typer.echo(render(_dict(call_gateway("GET", url, key, _path(route), None))))


def _command(action: str, doc: str) -> None:
    def run(
        route: RouteArg, key: KeyOption, reason: ReasonOption = "", url: UrlOption = None
    ) -> None:
        body = {"reason": reason} if reason else None
        typer.echo(render(_dict(call_gateway("POST", url, key, _path(route, action), body))))

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
