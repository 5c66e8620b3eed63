"""``loragate eval run`` (through the gateway, which answers the cases) and ``loragate eval
runs list|show`` (from the database)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.common import KeyOption, UrlOption, call_gateway, fail, gateway_url, settings_of
from service.cli.db import with_session
from service.evaluation.runs import as_dict, get_run, list_runs
from service.evaluation.service import run_page
from service.evaluation.summary import BASELINE, CANDIDATE, rate_text

runs_app = typer.Typer(help="Evaluation runs: list and read them.", no_args_is_help=True)
POLL_S = 2.0


def run(
    ctx: typer.Context,
    route: Annotated[str, typer.Argument(help="The route whose pack is run.")],
    candidate: Annotated[str, typer.Argument(help="The adapter version evaluated, NAME@N.")],
    key: KeyOption,
    pack: Annotated[
        str | None,
        typer.Option(help="The route's pack version NAME@N (default: the newest pack's newest)."),
    ] = None,
    baseline: Annotated[
        str,
        typer.Option(
            help="Compared case by case with: stable (the route's version now), base (the base "
            "model), another version NAME@M, or none."
        ),
    ] = "stable",
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight at once.")] = 2,
    wait: Annotated[
        bool, typer.Option(help="Wait for the figures (--no-wait: print the run id and go).")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the figures.")] = 3600.0,
    url: UrlOption = None,
) -> None:
    """Run a pack through the real engine: the candidate (and an adapter baseline) placed on the
    route's pool, each case answered under the route's contract at temperature 0. Prints each
    arm's figures and the paired comparison; exits 1 when the run did not finish."""
    settings = settings_of(ctx)
    base = gateway_url(settings, url)
    if pack is None:
        pack = _newest_pack(base, key, route)
    body = {
        "route": route, "pack": pack, "candidate": candidate, "concurrency": concurrency,
        "baseline": None if baseline == "none" else baseline,
    }  # fmt: skip
    started = call_gateway(base, key, "POST", "/v1/admin/eval/runs", body)
    assert isinstance(started, dict)
    typer.echo(f"started {started['id']}: {route}/{pack}, {candidate} vs {started['baseline']}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    found = started
    while found["status"] == "running":
        if time.monotonic() > deadline:
            raise fail(f"{started['id']} is still running; see `loragate eval runs show`")
        time.sleep(POLL_S)
        answer = call_gateway(base, key, "GET", f"/v1/admin/eval/runs/{started['id']}", None)
        assert isinstance(answer, dict)
        found = answer
    for line in report_lines(found):
        typer.echo(line)
    if found["status"] != "done":
        raise typer.Exit(1)


def _newest_pack(base: str, key: str, route: str) -> str:
    listed = call_gateway(base, key, "GET", f"/v1/admin/eval/packs?route={route}", None)
    assert isinstance(listed, dict)
    packs = listed["data"]
    if not packs:
        raise fail(f"route {route} has no evaluation pack: create one with `eval pack create`")
    newest = max(packs, key=lambda p: (p["created_at"], p["version"]))
    return f"{newest['name']}@{newest['version']}"


@runs_app.command("list")
def list_(
    ctx: typer.Context,
    route: Annotated[str | None, typer.Option(help="Only this route's runs.")] = None,
) -> None:
    """The newest runs first: id, status, pack, candidate, baseline, pass rates."""
    found = with_session(settings_of(ctx), lambda session: list_runs(session, route))
    for info in found:
        typer.echo(_one_line(as_dict(info)))
    if not found:
        typer.echo("no evaluation runs" + (f" for {route}" if route else ""))


@runs_app.command("report")
def report(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id (run_...).")],
    out: Annotated[Path, typer.Option(help="Where to write the HTML page.")],
) -> None:
    """One self-contained HTML page: rates with intervals, the paired verdict, confusion
    matrices, per-slice rates, and each failed case beside what was expected."""
    page = with_session(settings_of(ctx), lambda session: run_page(session, run_id))
    out.write_text(page, encoding="utf-8")
    typer.echo(f"wrote {out}")


@runs_app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id (run_...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole run as JSON.")] = False,
) -> None:
    """One run: its figures per arm and the paired comparison."""
    info = with_session(settings_of(ctx), lambda session: get_run(session, run_id))
    if as_json:
        typer.echo(json.dumps(as_dict(info), indent=2, default=str))
        return
    for line in report_lines(as_dict(info)):
        typer.echo(line)


def _one_line(run: dict[str, Any]) -> str:
    arms = (run.get("figures") or {}).get("arms", {})
    rates = " ".join(f"{arm}={rate_text(figures['passed'])}" for arm, figures in arms.items())
    return (
        f"{run['id']}  {run['status']:<11} {run['pack']}  {run['candidate']} vs "
        f"{run['baseline'] or '-'}  {rates}"
    ).rstrip()


def report_lines(run: dict[str, Any]) -> list[str]:
    """A run as a person reads it: each arm's rates side by side, then the comparison."""
    head = f"{run['id']}  {run['pack']}  {run['candidate']} vs {run['baseline'] or '-'}"
    lines = [f"{head}: {run['status']}" + (f" ({run['reason']})" if run["reason"] else "")]
    figures = run.get("figures")
    if not figures:
        return lines
    arms = [a for a in (CANDIDATE, BASELINE) if a in figures["arms"]]
    by_arm = [figures["arms"][a] for a in arms]
    rows: list[tuple[str, list[str]]] = [
        ("passed", [rate_text(arm["passed"]) for arm in by_arm]),
        ("schema valid", [rate_text(arm["schema_valid"]) for arm in by_arm]),
        ("escalated", [rate_text(arm["escalated"]) for arm in by_arm]),
    ]
    first = figures["arms"][CANDIDATE]
    for kind in first["by_kind"]:
        rows.append((f"kind {kind}", [rate_text(arm["by_kind"][kind]) for arm in by_arm]))
    for name, field in first["fields"].items():
        rows.append((f"{name} exact", [rate_text(arm["fields"][name]["exact_match"])
                                       for arm in by_arm]))  # fmt: skip
        for label in field["classes"]:
            rows.append((f"{name}={label} F1", [_f1(figures["arms"][a], name, label)
                                                  for a in arms]))  # fmt: skip
    width = max(len(label) for label, _ in rows)
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{a:<24}" for a in arms).rstrip())
    lines += [f"  {label:<{width}}  " + "  ".join(f"{c:<24}" for c in cells).rstrip()
              for label, cells in rows]  # fmt: skip
    compared = figures.get("comparison")
    if compared:
        overall = compared["passed"]
        lines.append(
            f"  compared with {run['baseline']}: {overall['verdict']} ({overall['only_candidate']} "
            f"cases only the candidate passed, {overall['only_baseline']} only the baseline; "
            f"p={overall['p_value']:.3g})"
        )
    return lines


def _f1(arm: dict[str, Any], name: str, label: str) -> str:
    found = arm["fields"][name]["classes"].get(label)
    return "-" if found is None or found["f1"] is None else f"{found['f1']:.2f}"
