"""Slow and idle clients: header, body and send timeouts and a connection cap,
on uvicorn with the gateway's protocol, and through a real `loragate serve` process.

Before: a connection sending nothing stayed open 80 s and more, ~20,000 of them exhausted the
open-files limit, and 50 streaming clients that never read kept their streams indefinitely.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service.api.connections import MAX_HEADER_BYTES, ConnectionLimits, protocol
from service.auth import Role
from service.db.models import RequestRecord
from service.db.session import create_engine, session_factory
from tests.conftest import chat_body, free_port, insert_key, wait_until
from tests.fake_engine import MODEL, Behaviour, FakeEngine

Scope = dict[str, Any]
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
EOF_WAIT_S = 30.0  # generous: the limits under test are a second or less


async def echo(scope: Scope, receive: Any, send: Any) -> None:
    """Reads the whole body, answers its size; notes a disconnect seen while reading."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope["state"]["seen"].append("disconnect")
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


@contextlib.asynccontextmanager
async def limited(limits: ConnectionLimits) -> AsyncIterator[tuple[int, list[str], list[str]]]:
    """uvicorn on a free port with the gateway's protocol; yields the port, what the app saw and
    the reasons connections were closed for."""
    seen: list[str] = []
    closed: list[str] = []
    limits = dataclasses.replace(limits, closed=closed.append)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        scope["state"] = {"seen": seen}
        seen.append("request")
        if scope.get("path") == "/early":  # answers without reading the body
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        if scope.get("path") != "/slow":
            await echo(scope, receive, send)
            return
        await asyncio.sleep(0.2)  # as the gateway awaits its engine
        try:
            await echo(scope, receive, send)
        except RuntimeError:  # uvloop: a write on a transport closed under the request
            seen.append("send failed")
            raise
        finally:
            seen.append("slow ended")

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
        http=protocol(limits), timeout_keep_alive=30,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started, what="uvicorn to start")
    try:
        yield port, seen, closed
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop, as ``loragate serve`` runs: its transports refuse a write once closed."""
    return uvloop.EventLoopPolicy()


def limits(**overrides: Any) -> ConnectionLimits:
    values: dict[str, Any] = {
        "header_timeout_s": 0.5, "body_timeout_s": 0.5, "send_timeout_s": 0.5,
        "max_connections": 100,
    }  # fmt: skip
    values.update(overrides)
    return ConnectionLimits(**values)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(), EOF_WAIT_S)
    except ConnectionResetError:
        return b""


async def test_a_connection_that_sends_nothing_is_closed() -> None:
    async with limited(limits()) as (port, _, closed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader) == b""
        writer.close()
        assert closed == ["header_timeout"]


async def test_headers_dripped_byte_by_byte_are_cut() -> None:
    """Each byte resets uvicorn's keep-alive timer; the header deadline does not move."""
    async with limited(limits()) as (port, _, closed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000 + b"\r\n\r\n"
        sent = 0

        async def drip() -> None:
            nonlocal sent
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.02)  # the client's pace, not a wait on the server

        dripping = asyncio.create_task(drip())
        assert await closed_by_server(reader) == b""
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dripping
        assert sent < len(request)  # cut while the headers were still coming
        writer.close()
        assert closed == ["header_timeout"]


async def test_a_body_that_stops_coming_is_cut() -> None:
    async with limited(limits()) as (port, seen, closed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        assert await closed_by_server(reader) == b""
        await wait_until(
            lambda: seen == ["request", "disconnect"], what="the app to see the disconnect"
        )
        writer.close()
        assert closed == ["body_timeout"]


async def test_headers_past_the_size_limit_get_400() -> None:
    async with limited(limits(header_timeout_s=30)) as (port, _, closed):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(MAX_HEADER_BYTES // 1000 + 2):
                writer.write(b"X-Big-%d: " % i + b"a" * 1000 + b"\r\n")
                await writer.drain()
        assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 400 ")
        writer.close()
        assert closed == []  # answered, not cut


async def open_from(port: int, source: str = "127.0.0.1") -> Connection:
    """A connection from a chosen loopback address (all of 127.0.0.0/8 is local on Linux)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def answered(connection: Connection, body: bytes = b"ab") -> bytes:
    reader, writer = connection
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    # The whole answer: echo's body is chunked, its last chunk is empty.
    return await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), EOF_WAIT_S)


async def test_past_the_cap_the_oldest_idle_connection_makes_room() -> None:
    async with limited(limits(header_timeout_s=30, max_connections=3)) as (port, _, closed):
        held = [await open_from(port) for _ in range(3)]
        await answered(held[1])  # busy once, idle again: newer than held[0]
        newcomer = await open_from(port)
        assert await closed_by_server(held[0][0]) == b""
        assert closed == ["shed_idle_cap"]
        for connection in (*held[1:], newcomer):
            assert (await answered(connection)).startswith(b"HTTP/1.1 200 ")
        for _, writer in (*held, newcomer):
            writer.close()


async def test_with_every_connection_busy_a_new_one_is_refused() -> None:
    async with limited(limits(header_timeout_s=30, max_connections=3)) as (port, seen, closed):
        busy = [await open_from(port) for _ in range(3)]
        for _, writer in busy:  # headers in, body still coming: a request in progress
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            await writer.drain()
        await wait_until(lambda: seen == ["request"] * 3, what="the three requests to start")
        reader, writer = await open_from(port)
        assert await closed_by_server(reader) == b""
        writer.close()
        assert closed == ["over_cap"]
        for busy_reader, busy_writer in busy:  # the three finish their requests
            busy_writer.write(b"cd")
            await busy_writer.drain()
            answer = await asyncio.wait_for(busy_reader.readuntil(b"\r\n0\r\n\r\n"), EOF_WAIT_S)
            assert answer.startswith(b"HTTP/1.1 200 ")
            busy_writer.close()


async def test_one_address_past_its_cap_sheds_its_own_idle_connections() -> None:
    capped = limits(header_timeout_s=30, max_connections=100, max_per_client=2)
    async with limited(capped) as (port, _, closed):
        other = await open_from(port, "127.0.0.3")
        flood = [await open_from(port, "127.0.0.2") for _ in range(5)]
        for reader, _ in flood[:3]:  # each newcomer past two closed the oldest of that address
            assert await closed_by_server(reader) == b""
        assert closed == ["shed_idle_client_cap"] * 3
        for connection in (other, *flood[3:]):
            assert (await answered(connection)).startswith(b"HTTP/1.1 200 ")
        for _, writer in (other, *flood):
            writer.close()


async def test_a_flood_of_idle_sockets_does_not_keep_a_client_out() -> None:
    """The finding: 1,000 idle sockets at a 1,000 cap refused 20 of 20 normal requests. Here
    200 idle sockets (from another address) at a 50 cap: every normal request is answered, each
    on a new connection, while the flood keeps reconnecting."""
    capped = limits(header_timeout_s=30, max_connections=50, max_per_client=0)
    async with limited(capped) as (port, _, closed):
        flood = [await open_from(port, "127.0.0.2") for _ in range(200)]
        answers = []
        for _ in range(20):
            flood.append(await open_from(port, "127.0.0.2"))
            connection = await open_from(port)
            answers.append(await answered(connection))
            connection[1].close()
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
        assert set(closed) == {"shed_idle_cap"} and len(closed) >= 170
        for _, writer in flood:
            writer.close()


async def test_pipelined_requests_nobody_reads_are_bounded() -> None:
    async with limited(limits(header_timeout_s=30, max_pipelined=4)) as (port, seen, closed):
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        polite_reader, polite_writer = await open_from(port)
        polite_writer.write(request * 3)  # within the bound: every answer comes
        await polite_writer.drain()
        for _ in range(3):
            answer = await asyncio.wait_for(polite_reader.readuntil(b"\r\n0\r\n\r\n"), EOF_WAIT_S)
            assert answer.startswith(b"HTTP/1.1 200 ")
        reader, writer = await open_from(port)
        # The first is still being answered when the rest overflow the queue and cut it.
        writer.write(request.replace(b"POST / ", b"POST /slow ") + request * 3000)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await wait_until(lambda: closed == ["pipeline_full"], what="the pipeliner cut")
        await wait_until(lambda: "slow ended" in seen, what="the slow request to end")
        assert "send failed" not in seen  # it saw the disconnect instead
        assert b"HTTP/1.1 400" not in await closed_by_server(reader)
        writer.close()
        assert (await answered((polite_reader, polite_writer))).startswith(b"HTTP/1.1 200 ")
        polite_writer.close()


async def sent_until_closed(port: int, request_line: bytes, chunked: bool = False) -> int:
    """Bytes of a huge body a client gets to send before the server closes (1 GiB at most)."""
    _, writer = await open_from(port)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 1000000000000"
    writer.write(request_line + b" HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
    mib = b"x" * 0x100000
    chunk = b"100000\r\n" + mib + b"\r\n" if chunked else mib
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < 1 << 30:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    writer.close()
    return sent


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_body_answered_early_is_not_read_on(chunked: bool) -> None:
    """The app answers without reading the body (as the gateway's early 401 and 413 do): the
    connection closes after the answer, so the client cannot go on sending (before: 4.9 GB in
    4 s). The client stops at 1 GiB: far past what socket buffers hold."""
    async with limited(limits(header_timeout_s=30)) as (port, _, closed):
        assert await sent_until_closed(port, b"POST /early", chunked) < 1 << 30
        assert closed == ["body_unread"]


# --- a real `loragate serve` ------------------------------------------------------------------


@contextlib.contextmanager
def loragate_serve(url: str, tmp_path: Path, engine: FakeEngine, **env: str) -> Iterator[str]:
    port = free_port()
    pool = {"name": "default", "base_model": MODEL, "urls": [engine.url]}
    variables = {
        **os.environ,
        "LORAGATE_DATABASE_URL": url,
        "LORAGATE_DATA_DIR": str(tmp_path),
        "LORAGATE_PORT": str(port),
        "LORAGATE_ENGINES": json.dumps([pool]),
        "LORAGATE_HEALTH_PROBE_INTERVAL_S": "0.2",
        "LORAGATE_SNAPSHOT_REFRESH_S": "0.2",
        "LORAGATE_RECORD_FLUSH_INTERVAL_S": "0.05",
        "LORAGATE_LOG_LEVEL": "WARNING",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], env=variables, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
        if process.stderr is not None:
            process.stderr.close()


async def until_up(url: str) -> None:
    async with httpx.AsyncClient() as client:

        async def up() -> bool:
            try:
                return (await client.get(f"{url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(up, timeout_s=90, what="loragate serve to answer")


async def records_of(url: str) -> list[RequestRecord]:
    db = create_engine(url)
    try:
        async with session_factory(db)() as session:
            return list((await session.scalars(select(RequestRecord))).all())
    finally:
        await db.dispose()


@pytest.mark.heavy
async def test_loragate_serve_closes_idle_connections_and_cuts_streams_nobody_reads(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    key = await insert_key(sqlite_url, Role.APP)
    sre_key = await insert_key(sqlite_url, Role.SRE)
    # 40 MB of stream: far more than the socket buffers between the gateway and the client.
    engine.then(Behaviour(tokens=["x" * 2000] * 20_000))
    env = {"LORAGATE_CLIENT_HEADER_TIMEOUT_S": "0.5", "LORAGATE_SEND_TIMEOUT_S": "1"}
    with loragate_serve(sqlite_url, tmp_path, engine, **env) as url:
        await until_up(url)
        port = int(url.rsplit(":", 1)[1])
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(idle_reader) == b""
        idle_writer.close()

        # An early 401 on the inference endpoint: the body is not read on (before: 4.9 GB).
        assert await sent_until_closed(port, b"POST /v1/chat/completions") < 1 << 30

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        body = json.dumps(chat_body(stream=True)).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        # The client reads nothing. The gateway cuts it, cancels the engine call, records 499.

        async def recorded() -> bool:
            return any(r.status_code == 499 for r in await records_of(sqlite_url))

        await wait_until(recorded, timeout_s=60, what="the cut stream's record")
        (record,) = [r for r in await records_of(sqlite_url) if r.status_code == 499]
        assert (record.stream, record.error_code) == (True, "client_closed_request")
        await wait_until(lambda: engine.cancelled == 1, timeout_s=30, what="the engine call cut")
        assert engine.completed == 0
        drained = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), EOF_WAIT_S):
                drained += chunk
        assert drained.startswith(b"HTTP/1.1 200 ") and b"data: [DONE]" not in drained
        writer.close()
        # The gateway still serves.
        async with httpx.AsyncClient() as client:
            ok = await client.post(
                f"{url}/v1/chat/completions", json=chat_body(),
                headers={"Authorization": f"Bearer {key}"}, timeout=30,
            )  # fmt: skip
        assert ok.status_code == 200
        # A connection of its own: one kept idle past the 0.5 s header timeout would be cut.
        async with httpx.AsyncClient() as client:
            scrape = await client.get(
                f"{url}/metrics", headers={"Authorization": f"Bearer {sre_key}"}, timeout=30
            )
        closed = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(scrape.text)
            for sample in family.samples
            if sample.name == "loragate_client_connections_closed_total"
        }
        # The idle connection at least (a test client pausing past 0.5 s would add one).
        assert closed["header_timeout"] >= 1 and closed["send_timeout"] == 1


@pytest.fixture(autouse=True)
def _no_dot_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The served process reads LORAGATE_* from the environment: none leak in from the shell."""
    for name in list(os.environ):
        if name.startswith("LORAGATE_"):
            monkeypatch.delenv(name)
