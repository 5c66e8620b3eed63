"""``loragate keys ...``: API keys, written straight to the configured database."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import cli_actor
from service.audit.events import record_event
from service.auth import Role
from service.cli.common import fail, settings_of
from service.cli.db import with_session
from service.clock import now
from service.db.models import ApiKey
from service.errors import AuthenticationFailed
from service.guard.tiers import Risk
from service.keys import store as key_store
from service.keys.credentials import generate_key, hash_secret, split_key
from service.limits.quota import KeyLimits, Quota

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)

KEY_ID_MAX = 32  # the api_keys.id column
# Keys whose --route and --tier limit which review items they see (admins see all).
REVIEW_ROLES = (Role.REVIEWER, Role.LEAD)
SECRET_MIN = 32  # a given secret must be as hard to guess as a generated one

QuietOption = Annotated[
    bool, typer.Option("--quiet", help="Print the key alone, e.g. KEY=$(loragate keys ...).")
]
RpmOption = Annotated[
    int | None, typer.Option("--rpm", min=1, help="Requests per minute (429 past it).")
]
TpmOption = Annotated[
    int | None,
    typer.Option(
        "--tpm",
        min=1,
        help="Tokens per minute, prompt plus completion; each request reserves its max_tokens "
        "and prompt first and is settled with the engine's count after.",
    ),
]
ConcurrentOption = Annotated[
    int | None, typer.Option("--max-concurrent", min=1, help="Requests in flight at once.")
]


def _limits_text(stored: dict[str, object] | None) -> str:
    limits = KeyLimits.from_json(stored)
    return limits.describe() if limits is not None else "none"


def _print_key(key: ApiKey, plaintext: str, quiet: bool) -> None:
    if quiet:
        typer.echo(plaintext)
        return
    typer.echo(f"id:    {key.id}\nrole:  {key.role}\nroutes: {key.allowed_routes or 'all'}")
    if key.role in REVIEW_ROLES:
        typer.echo(f"tiers: {key.allowed_tiers or 'all'}")
    typer.echo(f"limits: {_limits_text(key.limits)}")
    typer.secho(f"key:   {plaintext}", bold=True)
    typer.echo("Store the key now: it is shown only once.")


def _key_summary(key: ApiKey) -> dict[str, object]:
    """What an audit event keeps of a key: never its secret or hash."""
    return {"name": key.name, "role": key.role, "routes": key.allowed_routes,
            "tiers": key.allowed_tiers, "limits": key.limits}  # fmt: skip


def _new_key(
    role: Role, name: str, routes: list[str] | None, limits: KeyLimits | None = None
) -> tuple[ApiKey, str]:
    new = generate_key()
    row = ApiKey(
        id=new.key_id,
        name=name,
        role=role.value,
        secret_hash=new.secret_hash,
        allowed_routes=routes,
        created_at=now(),
        limits=limits.to_json() if limits is not None else None,
    )
    return row, new.plaintext


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[
        Role,
        typer.Option(
            help="app, sre, reviewer, lead (a reviewer who also adjudicates two reviewers' "
            "disagreements) or admin."
        ),
    ],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")] = "",
    route: Annotated[
        list[str] | None,
        typer.Option(
            help="Limit an app key to calling this route, or a reviewer or lead key to "
            "reviewing its items (repeatable)."
        ),
    ] = None,
    tier: Annotated[
        list[Risk] | None,
        typer.Option(
            help="Limit a reviewer or lead key to review items of this risk tier: low, "
            "medium, high or critical (repeatable)."
        ),
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
    quiet: QuietOption = False,
) -> None:
    """Create an API key and print it once; --rpm, --tpm and --max-concurrent limit what it
    may use on inference, across every gateway."""
    if route and role not in (Role.APP, *REVIEW_ROLES):
        raise fail("--route limits apply to app, reviewer and lead keys only")
    if tier and role not in REVIEW_ROLES:
        raise fail("--tier limits apply to reviewer and lead keys only")
    quota = Quota(rpm, tpm, max_concurrent)
    limits = KeyLimits(quota) if not quota.empty else None
    row, plaintext = _new_key(role, name or role.value, route or None, limits)
    row.allowed_tiers = sorted({t.value for t in tier}) if tier else None

    async def work(session: AsyncSession) -> None:
        session.add(row)
        await record_event(
            session, cli_actor(), "key.create", f"key:{row.id}", after=_key_summary(row)
        )

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
        if await key_store.count_keys(session, Role.ADMIN.value):
            return False
        session.add(row)
        await record_event(
            session, cli_actor(), "key.bootstrap", f"key:{row.id}", after=_key_summary(row)
        )
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
    """List keys (id, role, state, routes, tiers, limits); secrets are never shown."""
    for key in with_session(settings_of(ctx), key_store.list_keys):
        state = "revoked" if key.revoked_at else "active"
        routes = ",".join(key.allowed_routes) if key.allowed_routes else "all"
        tiers = ",".join(key.allowed_tiers) if key.allowed_tiers else "all"
        typer.echo(
            f"lg-{key.id}  {key.role:<8} {state:<8} routes={routes}  tiers={tiers}  "
            f"limits={_limits_text(key.limits)}  {key.name}"
        )


@keys_app.command("limits")
def keys_limits(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id (after 'lg-').")],
    route: Annotated[
        str | None,
        typer.Option(help="Set the limits of this key on this route alone (on top of its own)."),
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: ConcurrentOption = None,
) -> None:
    """Set a key's limits (or, with --route, its limits on one route); the values given replace
    the previous ones and a limit left out is removed, so no option at all clears them.
    Gateways apply the change at once on PostgreSQL, else at their next snapshot refresh."""
    key_id = key_id.removeprefix("lg-").split("-")[0]

    async def work(session: AsyncSession) -> KeyLimits | None:
        key = await key_store.get_active_key(session, key_id)
        if key is None:
            raise fail(f"no active key with id {key_id}")
        before = key.limits
        current = KeyLimits.from_json(key.limits) or KeyLimits()
        changed = current.with_quota(route, Quota(rpm, tpm, max_concurrent))
        key.limits = changed.to_json()
        await record_event(
            session, cli_actor(), "key.limits", f"key:{key_id}",
            before={"limits": before}, after={"limits": key.limits},
        )  # fmt: skip
        return changed

    changed = with_session(settings_of(ctx), work, write=True)
    typer.echo(f"lg-{key_id} limits: {changed.describe() if changed else 'none'}")


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key id (after 'lg-').")],
) -> None:
    """Revoke a key; gateways refuse it at once on PostgreSQL, else within one snapshot
    refresh."""
    key_id = key_id.removeprefix("lg-").split("-")[0]

    async def work(session: AsyncSession) -> bool:
        if not await key_store.revoke_key(session, key_id, now()):
            return False
        await record_event(
            session, cli_actor(), "key.revoke", f"key:{key_id}",
            before={"state": "active"}, after={"state": "revoked"},
        )  # fmt: skip
        return True

    if not with_session(settings_of(ctx), work, write=True):
        raise fail(f"no active key with id {key_id}")
    typer.echo(f"revoked lg-{key_id}")
