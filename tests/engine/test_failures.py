"""Engine failures against the scriptable fake: retries, ejection, broken streams, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from service.engine.pool import EnginePool, HealthProber, Replica, ReplicaState
from tests.conftest import (
    Harness,
    chat_body,
    free_port,
    make_settings,
    running_gateway,
    served,
    wait_until,
)
from tests.fake_engine import Behaviour, FakeEngine

CHAT = "/v1/chat/completions"


@contextlib.asynccontextmanager
async def gateway_on(
    sqlite_url: str, tmp_path: Path, *engines: FakeEngine, **overrides: Any
) -> AsyncIterator[Harness]:
    """A gateway over these fakes. Probes run once at start (then every 60 s, i.e. not during
    the test) so ejections stay put; it waits for every replica to pass that first probe."""
    overrides.setdefault("health_probe_interval_s", 60.0)
    settings = make_settings(sqlite_url, tmp_path, [e.url for e in engines], **overrides)
    async with running_gateway(settings) as harness:
        pool = pool_of(harness)
        await wait_until(
            lambda: all(r.state is ReplicaState.HEALTHY for r in pool.replicas),
            what="every replica to pass its first probe",
        )
        yield harness


def pool_of(harness: Harness) -> EnginePool:
    pool: EnginePool = harness.app.state.gateway.engines.pools["default"]
    return pool


async def post(harness: Harness, **extra: Any) -> httpx.Response:
    return await harness.client.post(CHAT, json=chat_body(**extra), headers=harness.auth())


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def stream_events(response: httpx.Response) -> list[dict[str, Any] | str]:
    """Parsed SSE events; the terminator is kept as the string "[DONE]"."""
    assert response.status_code == 200
    events: list[dict[str, Any] | str] = []
    for block in response.text.split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            events.append("[DONE]" if data == "[DONE]" else orjson.loads(data))
    return events


def assert_ends_with_error(events: list[dict[str, Any] | str], code: str) -> None:
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and set(error) == {"error"}
    assert error["error"]["code"] == code and error["error"]["message"]
    assert events.count("[DONE]") == 1


async def last_record(harness: Harness, count: int = 1) -> Any:
    records = await harness.records(count)
    assert len(records) == count
    return records[-1]


def retries(harness: Harness) -> float:
    counter = harness.app.state.gateway.metrics.upstream_retries.labels("default")
    return float(counter._value.get())


# --- engine unreachable -------------------------------------------------------------------


async def test_connect_refused_gives_503(sqlite_url: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # eject_for_s=0: the failing replica stays usable, so the request really tries to connect.
    settings = make_settings(sqlite_url, tmp_path, [dead], eject_for_s=0.0)
    async with running_gateway(settings) as harness:
        error_of(await post(harness), 503, "engine_connect_failed")
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (503, "engine_connect_failed")


async def test_ejected_only_replica_gives_503_unavailable(sqlite_url: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_gateway(make_settings(sqlite_url, tmp_path, [dead])) as harness:
        replica = pool_of(harness).replicas[0]
        await wait_until(lambda: replica.state is ReplicaState.EJECTED, what="failed probe")
        error_of(await post(harness), 503, "engine_unavailable")
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (503, "engine_unavailable")


# --- failures before the first byte -------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_500_is_retried_once_on_another_replica(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine, stream: bool
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine, engine2) as harness:
        engine.then(Behaviour(kind="status", status=500))  # the first choice: both idle, healthy
        r = await post(harness, stream=stream)
        assert r.status_code == 200, r.text
        if stream:
            assert stream_events(r)[-1] == "[DONE]"
        failing, good = pool_of(harness).replicas
        assert failing.state is ReplicaState.EJECTED and failing.last_error == "HTTP 500"
        assert good.state is ReplicaState.HEALTHY
        assert retries(harness) == 1
        record = await last_record(harness)
    assert (len(engine.requests), len(engine2.requests)) == (1, 1)
    assert (record.status_code, record.attempts, record.replica) == (200, 2, engine2.url)


async def test_500_from_the_only_replica_gives_502(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        engine.then(Behaviour(kind="status", status=500))
        error_of(await post(harness), 502, "engine_server_error")
        assert pool_of(harness).replicas[0].state is ReplicaState.EJECTED
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (502, "engine_server_error")
    assert (record.attempts, record.replica) == (1, engine.url)
    assert len(engine.requests) == 1


async def test_400_from_engine_is_the_clients_error(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine, engine2) as harness:
        engine.then(Behaviour(kind="status", status=400))
        error = error_of(await post(harness), 400, "engine_rejected_request")
        assert "scripted failure 400" in error["message"]
        assert error["type"] == "invalid_request_error"
        assert all(r.state is ReplicaState.HEALTHY for r in pool_of(harness).replicas)
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (400, "engine_rejected_request")
    assert (len(engine.requests), len(engine2.requests)) == (1, 0)


async def test_garbage_answer_gives_502(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        engine.then(Behaviour(kind="garbage"))
        r = await post(harness)
        error_of(r, 502, "engine_bad_response")
        assert "<html>" not in r.text
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (502, "engine_bad_response")


async def test_stream_answered_without_an_event_stream_gives_502(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        engine.then(Behaviour(kind="html"))
        r = await post(harness, stream=True)
        error_of(r, 502, "engine_bad_response")
        assert "proxy error page" not in r.text
        record = await last_record(harness)
    assert (record.status_code, record.error_code, record.stream) == (
        502,
        "engine_bad_response",
        True,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_first_byte_timeout_gives_504_without_retry(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine, stream: bool
) -> None:
    async with gateway_on(
        sqlite_url, tmp_path, engine, engine2, first_byte_timeout_s=0.3
    ) as harness:
        engine.then(Behaviour(delay_s=3.0))
        error_of(await post(harness, stream=stream), 504, "engine_timeout")
        assert pool_of(harness).replicas[0].state is ReplicaState.EJECTED
        record = await last_record(harness)
        # The gateway dropped the upstream call, so the engine stops working on it.
        await wait_until(lambda: engine.cancelled == 1, what="the upstream call to be cancelled")
    assert (record.status_code, record.error_code) == (504, "engine_timeout")
    assert (record.attempts, record.replica) == (1, engine.url)
    assert (len(engine.requests), len(engine2.requests)) == (1, 0)
    assert retries(harness) == 0


# --- failures after the stream started ----------------------------------------------------


async def test_broken_stream_ends_with_error_event_and_is_not_retried(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine, engine2) as harness:
        engine.then(Behaviour(kind="broken_stream", cut_after=2))
        events = stream_events(await post(harness, stream=True))
        assert_ends_with_error(events, "engine_stream_broken")
        chunks = [e for e in events[:-2] if isinstance(e, dict)]
        assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hello", " from"]
        record = await last_record(harness)
    assert (record.status_code, record.error_code) == (502, "engine_stream_broken")
    assert record.response_body == "Hello from"
    assert (len(engine.requests), len(engine2.requests)) == (1, 0)


async def test_stalled_stream_times_out_with_error_event(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine, idle_timeout_s=0.3) as harness:
        engine.then(Behaviour(kind="stall", cut_after=1))
        events = stream_events(await post(harness, stream=True))
        assert_ends_with_error(events, "engine_timeout")
        assert pool_of(harness).replicas[0].state is ReplicaState.EJECTED
        record = await last_record(harness)
        await wait_until(lambda: engine.cancelled == 1, what="the stalled call to be dropped")
    assert (record.status_code, record.error_code) == (504, "engine_timeout")
    assert record.ttft_ms is not None  # one token came before the stall


@pytest.mark.parametrize(
    ("kind", "code"), [("error_event", "engine_stream_broken"), ("garbage", "engine_bad_response")]
)
async def test_bad_event_mid_stream_ends_with_error_event(
    gateway: Harness, engine: FakeEngine, kind: str, code: str
) -> None:
    engine.then(Behaviour(kind=kind, cut_after=2))
    events = stream_events(await post(gateway, stream=True))
    assert_ends_with_error(events, code)
    assert "engine died" not in str(events) and "not json" not in str(events)
    record = await last_record(gateway)
    assert (record.status_code, record.error_code) == (502, code)


# --- client disconnects -------------------------------------------------------------------


async def test_client_leaving_cancels_a_slow_unary_call(
    gateway: Harness, engine: FakeEngine
) -> None:
    engine.then(Behaviour(delay_s=5.0))
    async with served(gateway.app) as base:
        async with aiohttp.ClientSession() as http:
            call = asyncio.create_task(
                http.post(base + CHAT, json=chat_body(), headers=gateway.auth())
            )
            await wait_until(lambda: len(engine.requests) == 1, what="the engine to get the call")
            call.cancel()  # drops the connection mid-request
            with contextlib.suppress(asyncio.CancelledError):
                await call
        await wait_until(lambda: engine.cancelled == 1, what="the upstream call to be cancelled")
        record = await last_record(gateway)
    assert (record.status_code, record.error_code) == (499, "client_closed_request")
    assert engine.completed == 0


async def test_client_leaving_cancels_a_stream(gateway: Harness, engine: FakeEngine) -> None:
    engine.then(Behaviour(token_delay_s=0.5, tokens=["a"] * 20))
    async with served(gateway.app) as base:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                base + CHAT, json=chat_body(stream=True), headers=gateway.auth()
            )
            assert response.status == 200
            assert (await response.content.readline()).startswith(b"data: {")
            response.close()
        await wait_until(lambda: engine.cancelled == 1, what="the upstream stream to be cancelled")
        record = await last_record(gateway)
    assert (record.status_code, record.error_code, record.stream) == (
        499, "client_closed_request", True,
    )  # fmt: skip
    assert engine.completed == 0


# --- replica health and balancing ---------------------------------------------------------


async def test_ejected_replica_returns_after_a_passing_probe(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        pool = pool_of(harness)
        replica = pool.replicas[0]
        engine.then(Behaviour(kind="status", status=500))
        error_of(await post(harness), 502, "engine_server_error")
        assert replica.state is ReplicaState.EJECTED
        error_of(await post(harness), 503, "engine_unavailable")  # still ejected: not tried
        assert len(engine.requests) == 1
        http = harness.app.state.gateway.engines.http
        assert await HealthProber([pool], http, 60.0, 2.0).probe(pool, replica)
        assert replica.state is ReplicaState.HEALTHY
        assert (await post(harness)).status_code == 200


def impatient_prober(harness: Harness) -> tuple[EnginePool, Replica, HealthProber]:
    """The only replica and a prober that gives up after 0.2 s (the fake can delay probes)."""
    pool = pool_of(harness)
    return (
        pool,
        pool.replicas[0],
        HealthProber([pool], harness.app.state.gateway.engines.http, 60.0, 0.2),
    )


async def test_a_probe_that_times_out_behind_busy_requests_does_not_eject(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        pool, replica, prober = impatient_prober(harness)
        engine.probe_delay_s = 1.0
        engine.then(Behaviour(delay_s=1.5))
        busy = asyncio.create_task(post(harness))
        await wait_until(lambda: replica.in_flight == 1, what="a request in flight")
        assert await prober.probe(pool, replica)
        assert replica.state is ReplicaState.HEALTHY
        assert (await busy).status_code == 200
        # The same slow probe of an idle replica counts: the second in a row ejects it.
        assert not await prober.probe(pool, replica)
        assert replica.state is ReplicaState.HEALTHY
        assert not await prober.probe(pool, replica)
        assert replica.state is ReplicaState.EJECTED


async def test_one_failed_probe_does_not_eject_the_only_replica(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine) as harness:
        pool, replica, prober = impatient_prober(harness)
        engine.probe_delay_s = 1.0
        assert not await prober.probe(pool, replica)  # e.g. a keep-alive connection reset
        assert replica.state is ReplicaState.HEALTHY and replica.last_error is not None
        assert (await post(harness)).status_code == 200  # still served
        engine.probe_delay_s = 0.0
        assert await prober.probe(pool, replica)  # a pass resets the count
        engine.probe_delay_s = 1.0
        assert not await prober.probe(pool, replica)
        assert replica.state is ReplicaState.HEALTHY


async def test_background_prober_brings_a_replica_back(
    gateway: Harness, engine: FakeEngine
) -> None:
    replica = pool_of(gateway).replicas[0]
    engine.then(Behaviour(kind="status", status=500))
    error_of(await post(gateway), 502, "engine_server_error")
    probes = engine.probes
    await wait_until(
        lambda: engine.probes > probes and replica.state is ReplicaState.HEALTHY,
        what="a passing probe",
    )
    assert (await post(gateway)).status_code == 200


async def test_least_in_flight_spreads_concurrent_requests(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine
) -> None:
    async with gateway_on(sqlite_url, tmp_path, engine, engine2) as harness:
        engine.default = engine2.default = Behaviour(delay_s=0.3)
        replies = await asyncio.gather(*(post(harness) for _ in range(4)))
        assert [r.status_code for r in replies] == [200] * 4
        assert all(r.in_flight == 0 for r in pool_of(harness).replicas)
        records = await harness.records(4)
    assert (len(engine.requests), len(engine2.requests)) == (2, 2)
    assert sorted(r.replica for r in records) == sorted([engine.url] * 2 + [engine2.url] * 2)
