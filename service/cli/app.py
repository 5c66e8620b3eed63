"""The ``loragate`` command line. Settings come from ``LORAGATE_*`` variables or ``.env``.

The root: ``serve`` and ``db``; each domain adds its group (``keys``, ``engine``, ``routes``,
``adapters``, ``rollout``, ``reviews``, ``drift``, ``eval``, ``audit``) from its own ``cli`` module.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import async_sessionmaker

from adapters.cli import adapters_app
from rollout.cli import rollout_app
from service.audit.cli import audit_app
from service.cards.cli import card
from service.cli.common import fail, settings_of
from service.cli.db import with_session, with_sessions
from service.cli.engine import engine_app
from service.db.migrations import downgrade, no_database, upgrade
from service.db.session import shown_url, sqlite_file
from service.drift.cli import drift_app
from service.evaluation.cli import eval_app
from service.keys import store as key_store
from service.keys.cli import keys_app
from service.review.cli import reviews_app
from service.routes.cli import routes_app

app = typer.Typer(
    help="loragate: an inference gateway for fine-tuned models.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(routes_app, name="routes")
app.add_typer(engine_app, name="engine")
adapters_app.command("card")(card)  # it reads other domains: wired here, at the root
app.add_typer(adapters_app, name="adapters")
app.add_typer(rollout_app, name="rollout")
app.add_typer(reviews_app, name="reviews")
app.add_typer(drift_app, name="drift")
app.add_typer(eval_app, name="eval")
app.add_typer(audit_app, name="audit")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run the gateway. With no engine pool configured, also runs a managed local vLLM."""
    import uvicorn

    from service.api.connections import ConnectionLimits, protocol
    from service.main import create_app

    settings = settings_of(ctx)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with_session(settings, key_store.count_keys)  # refuses an unmigrated database
    app = create_app(settings)
    closed = app.gateway.metrics.connections_closed
    uvicorn.run(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        # Every request is in request_records and metrics; a log line each would double the cost.
        access_log=False,
        # Client addresses are not used; the proxy-headers middleware would be one more layer.
        proxy_headers=False,
        # Slow and idle clients: header, body, send and keep-alive timeouts, connection caps.
        http=protocol(
            ConnectionLimits(
                header_timeout_s=settings.client_header_timeout_s,
                body_timeout_s=settings.client_body_timeout_s,
                send_timeout_s=settings.send_timeout_s,
                max_connections=settings.max_connections,
                max_per_client=settings.max_connections_per_client,
                max_pipelined=settings.max_pipelined_requests,
                closed=lambda reason: closed.labels(reason).inc(),
            )
        ),
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
    )


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (creates the SQLite file on first use)."""
    settings = settings_of(ctx)
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}: {settings.effective_database_url.split('@')[-1]}")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Argument(help="Revision to go back to, e.g. 0010, or -1 for one step.")
    ],
) -> None:
    """Undo migrations down to REVISION, before running an older release on this database.

    The tables and columns the undone migrations added are dropped with their data: back the
    database up first.
    """
    settings = settings_of(ctx)
    url = settings.effective_database_url
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise fail(str(no_database(shown_url(url))))
    try:
        downgrade(url, revision)
    except CommandError as exc:
        raise fail(f"cannot downgrade to {revision}: {exc}") from exc
    typer.echo(f"database at {revision}: {shown_url(url).split('@')[-1]}")


@db_app.command("check")
def db_check(ctx: typer.Context) -> None:
    """Exit 0 when the database is at this version's newest migration, else 1 saying why
    (e.g. a deployment's init container, waiting for the migrations job)."""
    settings = settings_of(ctx)

    async def nothing(_: async_sessionmaker[Any]) -> None:
        return None

    with_sessions(settings, nothing)  # refuses a missing or unmigrated database
    typer.echo(f"database is at the newest migration: {shown_url(settings.effective_database_url)}")
