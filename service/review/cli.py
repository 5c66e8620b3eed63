"""``loragate reviews ...``: export reviewers' decisions as training data (reads the database)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.audit.actor import cli_actor
from service.cli.common import fail, iso_time, settings_of
from service.cli.db import with_sessions
from service.review.export import Export, ExportFilters, RecordedExport, export_and_record
from service.review.thresholds_cli import HELP as THRESHOLDS_HELP
from service.review.thresholds_cli import thresholds

reviews_app = typer.Typer(
    help="Review decisions (training data export, escalation thresholds).", no_args_is_help=True
)
reviews_app.command("thresholds", help=THRESHOLDS_HELP)(thresholds)

FILES = ("train.jsonl", "validation.jsonl", "all.jsonl", "manifest.json")


def write_manifest(out: Path, export: Export) -> None:
    """manifest.json, next to the JSONL files the export wrote."""
    manifest = json.dumps(export.manifest, indent=2, ensure_ascii=False) + "\n"
    (out / "manifest.json").write_text(manifest, encoding="utf-8")


@reviews_app.command("export")
def export(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option(help="New (or empty) directory for the files; refused if not empty.")
    ],
    route: Annotated[
        list[str] | None, typer.Option(help="Only this route's examples (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Decided (or, unreviewed, requested) at or after: ISO time.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="... and before this ISO time.")] = None,
    include_unreviewed_above: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Also take unreviewed answers that passed the schema, were not escalated and "
            "have at least this confidence.",
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share held out in validation.jsonl.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Changes which examples are held out.")] = 0,
    redact: Annotated[
        bool, typer.Option("--redact/--no-redact", help="Mask e-mails, phones, long numbers.")
    ] = True,
) -> None:
    """Export approved and corrected answers as chat JSONL, and record the data snapshot.

    The files are written as the rows are read (memory stays flat however large the export).
    Writes OUT/train.jsonl and OUT/validation.jsonl (a deterministic split by content hash),
    OUT/all.jsonl (both: `loragate adapters train --data OUT/all.jsonl` takes one file and
    splits it itself) and OUT/manifest.json (counts, filters, sha256 of each file, snapshot id).
    Register the trained adapter with `--data-snapshot <snapshot id>`.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise fail(f"{out} exists and is not an empty directory; choose a new --out")
    filters = ExportFilters(
        routes=route or None, since=iso_time(since, "--since"), until=iso_time(until, "--until"),
        include_unreviewed_above=include_unreviewed_above, val_fraction=val_fraction,
        seed=seed, redact=redact,
    )  # fmt: skip

    async def run(sessions: async_sessionmaker[Any]) -> RecordedExport:
        return await export_and_record(sessions, filters, "cli", cli_actor(), out)

    recorded = with_sessions(settings_of(ctx), run)
    data = recorded.export
    write_manifest(out, data)
    counts = data.manifest["counts"]
    typer.echo(
        f"approved {counts['approved']}, corrected {counts['corrected']}, "
        f"unreviewed {counts['unreviewed']}, duplicates removed {counts['duplicates_removed']}, "
        f"skipped {counts['skipped']}"
    )
    typer.echo(f"train {counts['train']}, validation {counts['validation']} -> {out}")
    state = "recorded" if recorded.created else "already recorded"
    typer.secho(f"snapshot {data.snapshot_id} ({state})", bold=True)
    if counts["train"] + counts["validation"] < 2:
        typer.echo("note: fewer than 2 examples; `adapters train` needs at least 2")
