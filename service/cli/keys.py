"""``loragate keys ...``: API keys, written straight to the configured database."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import Role, generate_key, hash_secret, split_key
from service.cli.common import fail, settings_of
from service.cli.db import with_session
from service.clock import now
from service.db import repositories
from service.db.models import ApiKey
from service.errors import AuthenticationFailed

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)

KEY_ID_MAX = 32  # the api_keys.id column
SECRET_MIN = 32  # a given secret must be as hard to guess as a generated one

QuietOption = Annotated[
    bool, typer.Option("--quiet", help="Print the key alone, e.g. KEY=$(loragate keys ...).")
]


def _print_key(key: ApiKey, plaintext: str, quiet: bool) -> None:
    if quiet:
        typer.echo(plaintext)
        return
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
        created_at=now(),
    )
    return row, new.plaintext


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[Role, typer.Option(help="app, sre, reviewer or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "",
    route: Annotated[
        list[str] | None, typer.Option(help="Limit an app key to this route (repeatable).")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Create an API key and print it once."""
    if route and role is not Role.APP:
        raise fail("--route limits apply to app keys only")
    row, plaintext = _new_key(role, name or role.value, route or None)

    async def work(session: AsyncSession) -> None:
        session.add(row)

    with_session(settings_of(ctx), work, write=True)
    _print_key(row, plaintext, quiet)


@keys_app.command("bootstrap")
def keys_bootstrap(
    ctx: typer.Context,
    quiet: QuietOption = False,
    from_env: Annotated[
        str | None,
        typer.Option(
            "--from-env",
            metavar="VAR",
            help="Take the key (lg-<id>-<secret>) from this environment variable instead of "
            "making one, e.g. from a deployment's Secret; an existing admin key is then not an "
            "error (nothing is done), so a job can run this on every upgrade.",
        ),
    ] = None,
) -> None:
    """Create the first admin key; refused once an admin key exists."""
    if from_env is None:
        row, plaintext = _new_key(Role.ADMIN, "bootstrap admin", None)
    else:
        row, plaintext = _given_key(from_env)

    async def work(session: AsyncSession) -> bool:
        if await repositories.count_keys(session, Role.ADMIN.value):
            return False
        session.add(row)
        return True

    if not with_session(settings_of(ctx), work, write=True):
        if from_env is not None:
            typer.echo("an admin key exists already; nothing to do")
            return
        raise fail("an admin key exists already; create more with `loragate keys create`")
    if from_env is not None:
        typer.echo(f"created admin key lg-{row.id} from ${from_env}")
        return
    _print_key(row, plaintext, quiet)


def _given_key(variable: str) -> tuple[ApiKey, str]:
    plaintext = os.environ.get(variable, "")
    if not plaintext:
        raise fail(f"${variable} is not set")
    try:
        key_id, secret = split_key(plaintext)
    except AuthenticationFailed as exc:
        raise fail(f"${variable} does not hold a loragate key (lg-<id>-<secret>)") from exc
    if len(key_id) > KEY_ID_MAX or len(secret) < SECRET_MIN:
        raise fail(
            f"${variable}: the key id is at most {KEY_ID_MAX} characters and the secret at "
            f"least {SECRET_MIN}"
        )
    row = ApiKey(
        id=key_id, name="bootstrap admin", role=Role.ADMIN.value,
        secret_hash=hash_secret(secret), allowed_routes=None, created_at=now(),
    )  # fmt: skip
    return row, plaintext


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List keys (id, role, routes, state); secrets are never shown."""
    for key in with_session(settings_of(ctx), repositories.list_keys):
        state = "revoked" if key.revoked_at else "active"
        routes = ",".join(key.allowed_routes) if key.allowed_routes else "all"
        typer.echo(f"lg-{key.id}  {key.role:<8} {state:<8} routes={routes}  {key.name}")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id (after 'lg-').")],
) -> None:
    """Revoke a key; gateways stop accepting it within one snapshot refresh."""
    key_id = key_id.removeprefix("lg-").split("-")[0]

    async def work(session: AsyncSession) -> bool:
        return await repositories.revoke_key(session, key_id, now())

    if not with_session(settings_of(ctx), work, write=True):
        raise fail(f"no active key with id {key_id}")
    typer.echo(f"revoked lg-{key_id}")
