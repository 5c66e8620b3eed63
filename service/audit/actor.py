"""Who makes a change: a key (with its role, the request id and the client's address) through
the API, a person at the CLI (no key: actor ``cli`` and the OS user), or the audit retention
job (actor ``retention``)."""

from __future__ import annotations

import getpass
import re
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from service.auth import Principal

CLI = "cli"
RETENTION = "retention"
REQUEST_ID_HEADER = "x-request-id"
# A client's own request id is kept when it looks like one; anything else is replaced.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class Actor:
    id: str  # the key id, or "cli"
    role: str | None
    os_user: str | None = None
    request_id: str | None = None
    client: str | None = None


def api_actor(principal: Principal, request: Request) -> Actor:
    """The caller of an API request: its key and role, the request id (the client's
    ``x-request-id`` when it sent a usable one, else a new one) and its address."""
    given = request.headers.get(REQUEST_ID_HEADER)
    request_id = given if given and _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
    client = request.client.host[:64] if request.client is not None else None
    return Actor(principal.key_id, principal.role.value, None, request_id, client)


def cli_actor() -> Actor:
    """Whoever runs a CLI command that writes the database directly."""
    try:
        user = getpass.getuser()[:64]
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER in the environment
        user = None
    return Actor(CLI, None, user)


def retention_actor() -> Actor:
    """The retention job, which removes the oldest audit events (``audit.prune``)."""
    return Actor(RETENTION, None)
