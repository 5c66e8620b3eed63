"""Per-key limits through the whole app in front of the fake engine: 429s as OpenAI sends
them, x-ratelimit-* headers, tokens reserved and settled, concurrency slots, per-route limits,
and what happens when the limits store is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from service.auth import Role
from service.db.models import RateLease, RateWindow
from tests.conftest import (
    Harness,
    chat_body,
    free_port,
    insert_key,
    make_settings,
    running_gateway,
    wait_until,
)
from tests.fake_engine import Behaviour, FakeEngine
from tests.gateway.test_inference_api import add_route, expect_error

CHAT = "/v1/chat/completions"


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        await add_route(h, "chat")
        await add_route(h, "other")
        yield h


async def limited_key(h: Harness, **limits: Any) -> dict[str, str]:
    key = await insert_key(h.url, Role.APP, limits=limits)
    await h.app.state.gateway.snapshot.reload()
    return {"Authorization": f"Bearer {key}"}


async def post(h: Harness, auth: dict[str, str], **body: Any) -> httpx.Response:
    return await h.client.post(CHAT, json=chat_body(**body), headers=auth)


async def scope_tokens(h: Harness) -> int:
    async with h.app.state.gateway.sessions() as session:
        return int(await session.scalar(select(func.sum(RateWindow.tokens))) or 0)


async def leases(h: Harness) -> int:
    async with h.app.state.gateway.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(RateLease)) or 0)


async def test_requests_past_the_rpm_get_openais_429_and_others_keys_are_untouched(
    harness: Harness,
) -> None:
    auth = await limited_key(harness, rpm=3)
    answers = [await post(harness, auth) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.headers["x-ratelimit-limit-requests"] for r in answers] == ["3"] * 3
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0"]
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")
    refused = await post(harness, auth)
    error = expect_error(harness, refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert "requests per min (RPM): Limit 3" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 120
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-request-id"]
    # Another key, and a key without limits (no headers, no counting), are served.
    other = await limited_key(harness, rpm=3)
    assert (await post(harness, other)).status_code == 200
    plain = await post(harness, harness.auth(Role.APP))
    assert plain.status_code == 200 and "x-ratelimit-limit-requests" not in plain.headers
    metrics = await harness.metrics()
    key_id = auth["Authorization"].split("-")[1]
    assert f'loragate_rate_limited_total{{key="{key_id}",limit="rpm"}} 1.0' in metrics
    records = await harness.records(6)
    assert [r.status_code for r in records].count(429) == 1
    assert {r.error_code for r in records if r.status_code == 429} == {"rate_limit_exceeded"}


async def test_tokens_are_reserved_before_the_call_and_settled_with_the_usage(
    harness: Harness,
) -> None:
    auth = await limited_key(harness, tpm=1000)
    first = await post(harness, auth, max_tokens=600)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 400  # 600 and the prompt held
    # The fake engine used 7 + 4 tokens: the reservation is settled down to them.
    await wait_until(lambda: scope_tokens_is(harness, 11), what="the tokens to be settled")
    second = await post(harness, auth, max_tokens=600)
    assert second.status_code == 200, second.text
    too_large = await post(harness, auth, max_tokens=1000)
    error = expect_error(harness, too_large, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens" and "Request too large" in error["message"]
    assert "retry-after" not in too_large.headers  # waiting would not help


async def scope_tokens_is(h: Harness, expected: int) -> bool:
    return await scope_tokens(h) == expected


async def test_concurrent_requests_past_the_limit_are_refused_until_one_ends(
    harness: Harness, engine: FakeEngine
) -> None:
    auth = await limited_key(harness, max_concurrent=2)
    engine.then(Behaviour(delay_s=30.0), Behaviour(delay_s=30.0))
    slow = [asyncio.create_task(post(harness, auth)) for _ in range(2)]
    await wait_until(lambda: len(engine.requests) >= 2, timeout_s=30, what="two calls in flight")
    refused = await post(harness, auth)
    error = expect_error(harness, refused, 429, "rate_limit_exceeded")
    assert "Concurrency limit reached" in error["message"]
    assert refused.headers["retry-after"] == "1"
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)
    await wait_until(lambda: leases_are(harness, 0), timeout_s=30, what="the slots to be freed")
    assert (await post(harness, auth)).status_code == 200


async def leases_are(h: Harness, expected: int) -> bool:
    return await leases(h) == expected


async def test_a_stream_carries_the_headers_and_settles_its_tokens(harness: Harness) -> None:
    auth = await limited_key(harness, rpm=10, tpm=5000)
    async with harness.client.stream(
        "POST", CHAT, json=chat_body(stream=True, max_tokens=300), headers=auth
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "9"
        assert response.headers["x-ratelimit-limit-tokens"] == "5000"
        body = await response.aread()
    assert body.endswith(b"data: [DONE]\n\n")
    await wait_until(lambda: scope_tokens_is(harness, 11), what="the stream's tokens settled")


async def test_a_route_limit_holds_on_its_route_only(harness: Harness) -> None:
    auth = await limited_key(harness, routes={"chat": {"rpm": 1}})
    assert (await post(harness, auth)).status_code == 200
    refused = await post(harness, auth)
    error = expect_error(harness, refused, 429, "rate_limit_exceeded")
    assert "on route 'chat'" in error["message"]
    assert (await post(harness, auth, model="other")).status_code == 200


@pytest.mark.parametrize("when_down", ["open", "closed"])
async def test_an_unreachable_limits_store_fails_as_configured(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, when_down: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], redis_url=nowhere, limits_when_store_down=when_down
    )
    async with running_gateway(settings) as h:
        await add_route(h, "chat")
        auth = await limited_key(h, rpm=1)
        answers = [await post(h, auth) for _ in range(3)]
        if when_down == "open":  # this gateway's own count still holds rpm=1
            assert [r.status_code for r in answers] == [200, 429, 429]
            expect_error(h, answers[1], 429, "rate_limit_exceeded")
        else:
            for answer in answers:
                expect_error(h, answer, 503, "rate_limits_unavailable")
        assert 'loragate_rate_limit_store_errors_total{operation="take"} 3.0' in await h.metrics()
        # Keys without limits never touch the store.
        assert (await post(h, h.auth(Role.APP))).status_code == 200


async def test_a_stream_left_while_its_headers_go_out_is_recorded_and_frees_its_slot(
    harness: Harness,
) -> None:
    # The client leaves while the response headers are being written, before the relay's
    # generator first runs; a generator that never started runs no `finally`.
    auth = await limited_key(harness, max_concurrent=1)
    body = orjson.dumps(chat_body(stream=True))
    headers_sent = asyncio.Event()
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await headers_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers_sent.set()
            await asyncio.Event().wait()  # the client is gone: this write never completes

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": CHAT, "raw_path": CHAT.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("gateway", 80),
        "headers": [
            (b"authorization", auth["Authorization"].encode()),
            (b"content-type", b"application/json"),
        ],
    }  # fmt: skip
    await asyncio.wait_for(harness.app(scope, receive, send), timeout=30)
    assert headers_sent.is_set()

    [record] = await harness.records(1)
    assert (record.status_code, record.error_code, record.stream) == (
        499, "client_closed_request", True,
    )  # fmt: skip
    assert harness.app.state.gateway.metrics.in_flight._value.get() == 0
    assert await leases(harness) == 0
    again = await post(harness, auth, stream=True)
    assert again.status_code == 200, again.text  # the key's one slot was given back
