"""``loragate eval pack ...``: evaluation packs (works on the database directly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.audit.actor import cli_actor
from service.cli.common import fail, iso_time, settings_of
from service.cli.db import with_session, with_sessions
from service.evaluation import runs_cli
from service.evaluation.cases import CaseError, CaseKind, describe, parse_jsonl
from service.evaluation.from_reviews import ReviewWindow
from service.evaluation.service import PackRequest, make_pack
from service.evaluation.store import PackInfo, list_packs, read_pack

eval_app = typer.Typer(help="Offline evaluation of adapter versions.", no_args_is_help=True)
pack_app = typer.Typer(
    help="Evaluation packs: immutable, versioned sets of cases for a route, held out of every "
    "later training export of that route.",
    no_args_is_help=True,
)
eval_app.add_typer(pack_app, name="pack")
eval_app.command("run")(runs_cli.run)
eval_app.add_typer(runs_cli.runs_app, name="runs")


def _print_pack(pack: PackInfo) -> None:
    kinds = ", ".join(f"{n} {kind}" for kind, n in pack.kinds.items())
    typer.echo(
        f"{pack.id:<40} {pack.cases} cases ({kinds}) sha256={pack.sha256[:12]} "
        f"{pack.created_at:%Y-%m-%d %H:%M} by={pack.created_by or '-'}"
    )


@pack_app.command("create")
def create(
    ctx: typer.Context,
    route: Annotated[str, typer.Argument(help="The route the pack tests.")],
    name: Annotated[str, typer.Argument(help="Pack name; versions become NAME@1, NAME@2...")],
    jsonl: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='Cases, one a line: {"messages": [...], "expected": ..., "kind": ..., '
            '"slices": {...}, "fields": [...]}, or training examples (the last assistant '
            "message is the expected answer).",
        ),
    ] = None,
    kind: Annotated[
        CaseKind, typer.Option(help="Kind of the file's cases that do not name one.")
    ] = CaseKind.HELD_OUT,
    from_reviews: Annotated[
        bool,
        typer.Option(
            "--from-reviews",
            help="Also take the route's approved and corrected review items (disputed ones as "
            "hard), leaving out those a recorded training export already took.",
        ),
    ] = False,
    since: Annotated[str | None, typer.Option(help="Reviews decided at or after: ISO.")] = None,
    until: Annotated[str | None, typer.Option(help="... and before this ISO time.")] = None,
) -> None:
    """Write ROUTE/NAME@N from a JSONL file and/or reviewed items. The same cases as the newest
    version print that version instead."""
    settings = settings_of(ctx)
    try:
        cases = parse_jsonl(jsonl.read_text(encoding="utf-8"), default_kind=kind) if jsonl else []
    except (CaseError, UnicodeDecodeError) as exc:
        raise fail(f"{jsonl}: {exc}") from None
    window = None
    if from_reviews:
        window = ReviewWindow(iso_time(since, "--since"), iso_time(until, "--until"))
    elif since or until:
        raise fail("--since and --until choose reviews: pass --from-reviews with them")
    request = PackRequest(
        route=route, name=name, cases=cases, from_reviews=window, created_by="cli",
        audit=cli_actor(),
    )  # fmt: skip
    outcome = with_sessions(settings, lambda sessions: make_pack(sessions, request))
    pack = outcome.created.pack
    if outcome.created.created:
        typer.secho(f"created {pack.id}", bold=True)
    else:
        typer.secho(f"unchanged: {pack.id} holds the same cases", bold=True)
    _print_pack(pack)
    typer.echo(json.dumps(outcome.report, indent=2))


@pack_app.command("list")
def list_(
    ctx: typer.Context,
    route: Annotated[str | None, typer.Option(help="Only this route's packs.")] = None,
) -> None:
    """Every pack version: id, cases by kind, sha256, when and by whom."""
    found = with_session(settings_of(ctx), lambda session: list_packs(session, route))
    for pack in found:
        _print_pack(pack)
    if not found:
        typer.echo("no evaluation packs" + (f" for {route}" if route else ""))


@pack_app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="ROUTE/NAME@N")],
    cases: Annotated[bool, typer.Option("--cases", help="Print every case as JSONL.")] = False,
) -> None:
    """One pack: what it holds, where its cases came from, and (--cases) the cases."""
    info, found = with_session(settings_of(ctx), lambda session: read_pack(session, ref))
    _print_pack(info)
    typer.echo(describe(found))
    typer.echo(json.dumps(info.sources, indent=2))
    if cases:
        for case in found:
            typer.echo(case.canonical())
