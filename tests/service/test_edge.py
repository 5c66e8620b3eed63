"""The edge of every endpoint FastAPI serves (issue 11, item 2): the key before the body, and the
body limit while it is read. Before, a 200 MB body to `POST /v1/admin/adapters` with no key was
read whole (resident memory 151 -> 748 MB) and only then refused with 401."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from service.auth import Role
from tests.conftest import Harness, make_settings, running_gateway, served
from tests.fake_engine import FakeEngine

LIMIT = 100_000
ORIGIN = {"Origin": "http://gateway"}


@pytest.fixture
async def harness(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    settings = make_settings(sqlite_url, tmp_path, [engine.url], max_body_bytes=LIMIT)
    async with running_gateway(settings) as h:
        yield h


@dataclass
class Exchange:
    """One request sent straight to the ASGI app, counting the body bytes the app took."""

    chunks: list[bytes]
    taken: int = 0
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""

    async def receive(self) -> dict[str, Any]:
        if not self.chunks:
            await asyncio.Event().wait()  # nothing more: as a client that keeps the line open
        chunk = self.chunks.pop(0)
        self.taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message.get("headers", []))
        else:
            self.body += message.get("body", b"")

    def error(self) -> str:
        return str(orjson.loads(self.body)["error"]["code"])


async def call(
    h: Harness, method: str, path: str, chunks: list[bytes], *, length: int | None = None,
    key: str | None = None, extra: list[tuple[bytes, bytes]] | None = None,
) -> Exchange:  # fmt: skip
    headers = [(b"host", b"gateway"), (b"content-type", b"application/json"), *(extra or [])]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("gateway", 80), "state": {},
    }  # fmt: skip
    exchange = Exchange(list(chunks))
    await asyncio.wait_for(h.app(scope, exchange.receive, exchange.send), 30)
    return exchange


BIG = [b" " * 50_000] * 40  # 2 MB, sent as 40 pieces


async def test_no_key_is_refused_before_the_body_is_read(harness: Harness) -> None:
    for path in ("/v1/admin/adapters", "/v1/reviews/claim", "/v1/admin/rollouts/chat"):
        declared = await call(harness, "POST", path, [b"{}"] * 10, length=LIMIT - 1)
        chunked = await call(harness, "POST", path, list(BIG))
        for exchange in (declared, chunked):
            assert (exchange.status, exchange.error()) == (401, "missing_api_key"), path
            assert exchange.taken == 0
            assert exchange.headers[b"connection"] == b"close"  # nothing more of it is read
            assert exchange.headers[b"www-authenticate"] == b"Bearer"
    wrong = await call(harness, "POST", "/v1/admin/adapters", list(BIG), key="lg-abc-def")
    assert (wrong.status, wrong.error(), wrong.taken) == (401, "invalid_api_key", 0)


async def test_a_declared_length_over_the_limit_is_refused_unread(harness: Harness) -> None:
    sre = harness.keys[Role.SRE]
    for key in (None, sre):
        exchange = await call(harness, "POST", "/v1/admin/adapters", BIG, length=2_000_000, key=key)
        assert (exchange.status, exchange.error(), exchange.taken) == (413, "body_too_large", 0)
    login = await call(harness, "POST", "/review/login", BIG, length=2_000_000)
    assert (login.status, login.taken) == (413, 0)


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/v1/admin/adapters", Role.SRE),
        ("/v1/reviews/claim", Role.REVIEWER),
        ("/v1/reviews/claim", Role.APP),  # a key of the wrong role: refused, at most the limit
        ("/review/login", None),  # the UI's forms
        ("/review/claim", None),
    ],
)
async def test_a_body_without_a_length_is_cut_at_the_limit(
    harness: Harness, path: str, role: Role | None
) -> None:
    key = harness.keys[role] if role else None
    extra = [(b"origin", b"http://gateway")] if path.startswith("/review/") else []
    if path == "/review/claim":  # a signed-in reviewer's form
        form = {"key": harness.keys[Role.REVIEWER]}
        signed = await harness.client.post("/review/login", data=form, headers=ORIGIN)
        assert signed.status_code == 303
        token = harness.client.cookies["lg_review_session"]
        extra.append((b"cookie", f"lg_review_session={token}".encode()))
    exchange = await call(harness, "POST", path, list(BIG), key=key, extra=extra)
    assert (exchange.status, exchange.error()) == (413, "body_too_large")
    assert LIMIT < exchange.taken <= LIMIT + 50_000  # stopped at the first piece past it
    assert exchange.headers[b"connection"] == b"close"


async def test_keyed_bodies_under_the_limit_pass_and_roles_still_hold(harness: Harness) -> None:
    h = harness
    claim = await h.client.post("/v1/reviews/claim", json={}, headers=h.auth(Role.REVIEWER))
    assert claim.status_code == 204
    wrong_role = await h.client.post("/v1/reviews/claim", json={}, headers=h.auth(Role.APP))
    assert wrong_role.status_code == 403
    bad = await h.client.post("/v1/admin/adapters", json={"name": "x"}, headers=h.auth(Role.SRE))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert (await h.client.get("/healthz")).status_code == 200  # no key needed outside /v1/
    assert (await h.client.get("/v1/admin/routes")).status_code == 401


async def test_a_real_client_gets_401_before_it_sends_the_body(harness: Harness) -> None:
    """Over a socket: only the headers of a 99 KB upload go out; the 401 comes back and the
    connection closes without one byte of the body sent."""
    async with served(harness.app) as url:
        address = urlsplit(url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        writer.write(
            b"POST /v1/admin/adapters HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nContent-Length: 99000\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # until the server closes
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in answer.lower() and b'"missing_api_key"' in answer
