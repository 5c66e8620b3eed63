"""What every server-rendered page for people shares (the reviewer UI, the rollout console).

- Rendering: Jinja templates that autoescape everything, each response with a
  Content-Security-Policy that allows only the page's own inline script (by a fresh nonce) and
  forms posted to this origin, and no caching.
- Cross-site requests: every POST must come from this origin (its ``Origin``, else ``Referer``,
  names this host), and the session cookie is SameSite=Strict.
- Sign-in: a person pastes their API key once; it is checked as the JSON API checks a bearer key
  and traded for a server-side session (``service.web.sessions``) whose HttpOnly cookie, scoped
  to the surface's path, holds a random token, never the key (``Secure`` over HTTPS or with
  ``LORAGATE_SECURE_COOKIES``). Every request looks the session's key up again, so a revoked key
  or a role change ends it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.auth import Authenticator, Principal, Role, require_role
from service.web import sessions as web_sessions

MAX_FORM_BYTES = 1_000_000
# Who a session's key id belongs to now (None: unknown or revoked).
KeyLookup = Callable[[str], Awaitable[Principal | None]]


class Pages:
    """The templates of one surface, rendered with the headers every page carries."""

    def __init__(self, folder: Path) -> None:
        self._templates = Environment(
            loader=FileSystemLoader(folder), autoescape=True, trim_blocks=True, lstrip_blocks=True
        )

    def render(
        self, name: str, status: int = 200, headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:  # fmt: skip
        nonce = secrets.token_urlsafe(16)
        html = self._templates.get_template(name).render(nonce=nonce, **context)
        response = HTMLResponse(html, status_code=status, headers=dict(headers or {}))
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response


def redirect(path: str, **params: str) -> RedirectResponse:
    """A 303 to ``path`` with the non-empty ``params`` as its query."""
    query = {k: v for k, v in params.items() if v}
    return RedirectResponse(path + (f"?{urlencode(query)}" if query else ""), status_code=303)


def same_origin(request: Request) -> bool:
    """A POST must come from a page of this host (a cross-site form post carries another)."""
    host = request.headers.get("host")
    source = request.headers.get("origin")
    if not source or source == "null":
        source = request.headers.get("referer")
    if not host or not source:
        return False
    return urlsplit(source).netloc.lower() == host.lower()


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form body (the pages send nothing else); the first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


@dataclass(frozen=True, slots=True)
class SignIn:
    """One surface's sign-in: its cookie, the path the cookie is scoped to, who may sign in."""

    cookie: str
    path: str
    roles: frozenset[Role]

    async def principal(
        self, request: Request, sessions: async_sessionmaker[Any], lookup: KeyLookup,
        now: datetime,
    ) -> Principal | None:  # fmt: skip
        """The person of a live session whose key is still active and allowed here."""
        async with sessions() as session:
            key_id = await web_sessions.key_of(session, request.cookies.get(self.cookie), now)
        if key_id is None:
            return None
        principal = await lookup(key_id)
        if principal is None or principal.role not in self.roles:
            return None
        return principal

    async def check_key(self, keys: Authenticator, key: str | None) -> Principal:
        """The person behind ``key``; ``GatewayError`` (401/403) otherwise, as the API does."""
        principal = await keys.identify(f"Bearer {key}" if key else None)
        require_role(principal, self.roles)
        return principal

    async def open(
        self, request: Request, sessions: async_sessionmaker[Any], principal: Principal,
        now: datetime, ttl_s: float, secure: bool, then: str,
    ) -> Response:  # fmt: skip
        """A new session for ``principal``: a redirect to ``then`` that sets its cookie."""
        async with sessions.begin() as session:
            token = await web_sessions.open_session(session, principal.key_id, now, ttl_s)
        response = redirect(then)
        response.set_cookie(
            self.cookie, token, max_age=int(ttl_s), path=self.path, httponly=True,
            samesite="strict", secure=secure or request.url.scheme == "https",
        )  # fmt: skip
        return response

    async def close(
        self, request: Request, sessions: async_sessionmaker[Any], then: RedirectResponse
    ) -> Response:
        """End the request's session; ``then``, with the cookie deleted."""
        async with sessions.begin() as session:
            await web_sessions.close_session(session, request.cookies.get(self.cookie))
        then.delete_cookie(self.cookie, path=self.path, httponly=True, samesite="strict")
        return then
