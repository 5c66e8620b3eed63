"""``loragate routes ...``: declare routes from YAML, list them, switch one's target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import cli_actor
from service.audit.events import record_event
from service.cli.common import (
    KeyOption,
    UrlOption,
    call_gateway,
    fail,
    gateway_url,
    settings_of,
    typed_path,
)
from service.cli.db import with_session
from service.db import repositories
from service.routes.config import RoutesConfigError, load_routes_file, sync_routes

routes_app = typer.Typer(help="Routes (what clients name as `model`).", no_args_is_help=True)


async def _targets(session: AsyncSession) -> dict[str, str]:
    return {r.name: r.target for r in await repositories.list_routes(session)}


@routes_app.command("sync")
def routes_sync(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="YAML routes file, relative to the current directory or else the import root."
        ),
    ],
) -> None:
    """Create or update the routes declared in a YAML file."""
    settings = settings_of(ctx)
    try:
        specs = load_routes_file(typed_path(settings, path))

        async def work(session: AsyncSession) -> list[str]:
            before = await _targets(session)
            names = await sync_routes(session, specs, settings.engine_pools())
            after = await _targets(session)
            await record_event(
                session, cli_actor(), "routes.sync", f"routes-file:{path}",
                before={"targets": {n: before.get(n) for n in names}},
                after={"targets": {n: after.get(n) for n in names}},
            )  # fmt: skip
            return names

        names = with_session(settings, work, write=True)
    except RoutesConfigError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"synced {len(names)} routes: {', '.join(names)}")


@routes_app.command("list")
def routes_list(ctx: typer.Context) -> None:
    """List routes, their targets and risk tiers."""
    for r in with_session(settings_of(ctx), repositories.list_routes):
        cap = r.max_tokens_cap or "default"
        typer.echo(
            f"{r.name:<24} pool={r.pool} target={r.target} max_tokens_cap={cap} risk={r.risk}"
        )


@routes_app.command("set-target")
def routes_set_target(
    ctx: typer.Context,
    route: Annotated[str, typer.Argument(help="The route to switch.")],
    target: Annotated[str, typer.Argument(help="An adapter version NAME@N, or 'base'.")],
    key: KeyOption,
    url: UrlOption = None,
) -> None:
    """Switch a route to another version through the running gateway (role sre).

    The gateway loads the version on every replica and checks that each generates with it
    before switching; requests in flight finish on the old version.
    """
    base = gateway_url(settings_of(ctx), url)
    payload = call_gateway(base, key, "PUT", f"/v1/admin/routes/{route}/target", {"target": target})
    assert isinstance(payload, dict)
    typer.echo(f"{payload['name']} -> {payload['target']}")
