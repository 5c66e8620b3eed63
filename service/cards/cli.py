"""``loragate adapters card NAME@N``: the model card, through the gateway (it reads the drift
of the routes serving the version)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cards.page import render
from service.cli.common import KeyOption, UrlOption, call_gateway, gateway_url, settings_of


def card(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The adapter version, NAME@N.")],
    key: KeyOption,
    html: Annotated[bool, typer.Option("--html", help="One self-contained HTML page.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write it to this file instead of printing it.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """The version's model card: what changed and why (changelog, training data snapshot and
    manifest), its evaluation runs against their baselines, its rollouts with their gate
    verdicts, who registered, started and decided what, and drift since its promotion."""
    base = gateway_url(settings_of(ctx), url)
    found = call_gateway(base, key, "GET", f"/v1/admin/adapters/{version}/card", None)
    assert isinstance(found, dict)
    if out is None:
        typer.echo(render(found) if html else _summary(found))
        return
    out.write_text(render(found) if html else json.dumps(found, indent=2), encoding="utf-8")
    typer.echo(f"wrote {out}")


def _summary(card: dict[str, Any]) -> str:
    v = card["version"]
    lines = [
        f"{v['id']}  sha256={v['sha256'][:12]}  {v['created_at']}  by={v['created_by'] or '-'}",
        f"  changelog: {v['changelog'] or '-'}",
        f"  data snapshot: {v['data_snapshot_id'] or '-'}",
    ]
    for run in card["evaluations"]:
        verdict = ((run.get("figures") or {}).get("comparison") or {}).get("passed", {})
        lines.append(f"  evaluation {run['id']} {run['pack']} vs {run['baseline'] or '-'}: "
                     f"{run['status']}, {verdict.get('verdict', '-')}")  # fmt: skip
    for r in card["rollouts"]:
        last = r["events"][-1]["reason"] if r["events"] else ""
        lines.append(f"  rollout {r['id']} on {r['route']}: {r['phase']} ({last})")
    for e in card["audit"]:
        lines.append(f"  {e['at']}  {e['actor']}  {e['action']}  {e['object']}")
    for route, s in card["serving"].items():
        lines.append(f"  serving {route} since {s['since']}: drift {s['drift'].get('status')}")
    return "\n".join(lines)
