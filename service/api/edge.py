"""The edge of every request FastAPI serves: the key checked before the body is read, and the
body limit enforced while it is read.

FastAPI reads and parses a JSON body before it runs a single dependency, so an admin endpoint's
key check used to come after the whole body was in memory (200 MB without a key: 600 MB of
resident memory). Here, before FastAPI sees the request:

- a declared ``Content-Length`` over ``LORAGATE_MAX_BODY_BYTES`` is refused (413) unread;
- a path under ``/v1/`` needs a key of ours: without one the answer is 401, the body unread
  (roles are still checked by each endpoint; a key of the wrong role can send at most the
  limit);
- a body without a declared length is counted as it arrives and refused (413) past the limit.

An early refusal of a request that carries a body closes the connection, so nothing more of the
body is read. The inference endpoints are answered ahead of this (``GatewayApp``) and do the
same in their own order: key, then body with the same limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.auth import Authenticator
from service.errors import AuthenticationFailed, BodyTooLarge, GatewayError
from service.settings import Settings

KEYED_PREFIX = "/v1/"


def needs_key(path: str) -> bool:
    """Every ``/v1/`` endpoint needs a key; health, metrics (own check), docs and the review
    UI (its own session) are outside."""
    return path.startswith(KEYED_PREFIX)


class EdgeParts(Authenticator, Protocol):
    """What the edge uses: the body limit and who a key belongs to."""

    @property
    def settings(self) -> Settings: ...


class EdgeGuard:
    def __init__(self, app: ASGIApp, gw: EdgeParts) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.gw.settings.max_body_bytes
        length, has_body = declared_body(scope)
        if length is not None and length > limit:
            await _refuse(scope, receive, send, _too_large(limit), close=True)
            return
        if needs_key(scope["path"]):
            caller = await self.gw.caller(header(scope, b"authorization"))
            if isinstance(caller, AuthenticationFailed):
                await _refuse(scope, receive, send, caller, close=has_body)
                return
        if length is not None:  # the server delivers no more than the declared length
            await self.app(scope, receive, send)
            return
        body = _CountedBody(receive, limit)
        response = _GuardedSend(send, body)
        try:
            await self.app(scope, body.receive, response.send)
        except BodyTooLarge:
            if not body.over:
                raise
        # The app may have answered the exception its own way: the 413 goes out instead.
        if body.over and not response.started:
            await _refuse(scope, receive, send, _too_large(limit), close=True)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than {limit} bytes.")


class _CountedBody:
    """``receive`` that counts body bytes and raises BodyTooLarge past the limit."""

    __slots__ = ("_limit", "_receive", "over", "size")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.size = 0
        self.over = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self._limit:
                self.over = True
                raise _too_large(self._limit)
        return message


class _GuardedSend:
    """Once the body went over the limit, whatever the app answers is replaced by the 413 (an
    app may turn the exception into something else, e.g. FastAPI's 400 for a body it could
    not read)."""

    __slots__ = ("_body", "_send", "started")

    def __init__(self, send: Send, body: _CountedBody) -> None:
        self._send = send
        self._body = body
        self.started = False

    async def send(self, message: Message) -> None:
        if self._body.over and not self.started:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _refuse(
    scope: Scope, receive: Receive, send: Send, error: GatewayError, *, close: bool
) -> None:
    response = error_response(error)
    if close:
        response.headers["connection"] = "close"
    await response(scope, receive, send)


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (lower-case name) straight from the ASGI scope (cheaper on the hot
    path than building Starlette's ``Headers``)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def declared_body(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None when absent or unreadable) and whether a body comes."""
    length = header(scope, b"content-length")
    chunked = header(scope, b"transfer-encoding") is not None
    if length is not None and length.strip().isdigit():
        declared = int(length)
        return declared, declared > 0 or chunked
    return None, chunked


# --- the OpenAPI description says the same --------------------------------------------------

BEARER = "bearerAuth"
KEY_RESPONSES: dict[str, dict[str, Any]] = {
    "401": {"description": "Missing or invalid API key (checked before the body is read)."},
    "403": {"description": "The key's role (or route list) does not allow this call."},
}
BODY_RESPONSE = {"413": {"description": "Body larger than LORAGATE_MAX_BODY_BYTES."}}


def document_the_edge(app: FastAPI) -> None:
    """A bearer security scheme on every keyed operation, with its 401/403, and 413 wherever
    an operation takes a body."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key `lg-<id>-<secret>` (`loragate keys create`).",
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if needs_key(path) or path == "/metrics":
                    operation["security"] = [{BEARER: []}]
                    for status, doc in KEY_RESPONSES.items():
                        responses.setdefault(status, doc)
                if "requestBody" in operation:
                    for status, doc in BODY_RESPONSE.items():
                        responses.setdefault(status, doc)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
