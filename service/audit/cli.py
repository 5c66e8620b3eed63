"""``loragate audit list`` and ``loragate audit verify``: the audit trail and its hash chain,
read from the configured database."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.chain import Verdict
from service.audit.store import AuditFilters, EventPage, list_events, verify_chain
from service.cli.common import iso_time, settings_of
from service.cli.db import with_session

audit_app = typer.Typer(help="The audit trail of changes (read-only).", no_args_is_help=True)


def verdict_json(verdict: Verdict) -> dict[str, object]:
    return {
        "intact": verdict.intact, "checked": verdict.checked, "first_id": verdict.first_id,
        "last_id": verdict.last_id, "head": asdict(verdict.head) if verdict.head else None,
        "broken": asdict(verdict.broken) if verdict.broken else None,
    }  # fmt: skip


def _summary(value: dict[str, object] | None) -> str:
    return json.dumps(value, separators=(",", ":"), default=str) if value is not None else "-"


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="At or after this ISO time.")] = None,
    until: Annotated[str | None, typer.Option(help="Before this ISO time.")] = None,
    actor: Annotated[str | None, typer.Option(help="A key id, or 'cli'.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. key.revoke, rollout.abort.")] = None,
    object: Annotated[str | None, typer.Option(help="e.g. key:3f2a9c01b7d4.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Events to show.")] = 100,
    cursor: Annotated[
        int | None, typer.Option(min=1, help="Show events older than this id (paging).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List audit events, newest first: time, actor (key id and role, or cli and the OS user),
    action, object, before -> after, request id and client address."""
    filters = AuditFilters(
        since=iso_time(since, "--since"), until=iso_time(until, "--until"), actor=actor,
        action=action, object=object, cursor=cursor, limit=limit,
    )  # fmt: skip

    async def work(session: AsyncSession) -> EventPage:
        return await list_events(session, filters)

    page = with_session(settings_of(ctx), work)
    for e in page.events:
        if as_json:
            typer.echo(json.dumps(asdict(e), default=str))
            continue
        who = f"{e.actor}/{e.actor_role}" if e.actor_role else f"{e.actor}({e.os_user or '?'})"
        typer.echo(
            f"{e.id:>6}  {e.at.isoformat(timespec='seconds')}  {who:<24} {e.action:<22} "
            f"{e.object}  {_summary(e.before)} -> {_summary(e.after)}  "
            f"req={e.request_id or '-'} client={e.client or '-'}"
        )
    if page.next_cursor is not None:
        typer.echo(f"more: --cursor {page.next_cursor}", err=True)


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Walk the hash chain oldest to newest and name the first broken link: an event edited
    (hash mismatch), events removed or inserted (prev_hash mismatch), the newest removed (head
    mismatch). Exit 0 when intact, 1 when broken. Checks signatures with
    LORAGATE_AUDIT_SIGNING_KEY when it is set."""
    settings = settings_of(ctx)
    key = settings.audit_signing_key.get_secret_value().encode()

    async def work(session: AsyncSession) -> Verdict:
        return await verify_chain(session, key)

    verdict = with_session(settings, work)
    if as_json:
        typer.echo(json.dumps(verdict_json(verdict)))
    else:
        span = f" (ids {verdict.first_id}..{verdict.last_id})" if verdict.checked else ""
        typer.echo(f"checked {verdict.checked} events{span}")
        if verdict.broken is None:
            head = verdict.head
            signed = "HMAC-SHA256 with the signing key" if key else "SHA-256, no signing key"
            typer.echo(f"intact ({signed}); head: event {head.last_id if head else '-'} "
                       f"{head.hash if head else '-'}")  # fmt: skip
        else:
            broken = verdict.broken
            where = "the head" if broken.event_id is None else f"event {broken.event_id}"
            typer.echo(f"BROKEN at {where}: {broken.problem.value}: {broken.detail}")
    if not verdict.intact:
        raise typer.Exit(1)
