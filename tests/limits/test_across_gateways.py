"""Limits hold across gateway replicas: two real gateway processes on one store, one key.

Each gateway alone would let the whole limit through; together they must let it through once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.auth import Role
from service.db.session import create_engine, session_factory
from service.routes.config import RouteSpec, sync_routes
from service.settings import EnginePoolSettings
from tests.conftest import chat_body, fresh_database, insert_key, wait_until
from tests.fake_engine import MODEL, FakeEngine
from tests.gateway_process import GatewayProcess
from tests.limits.test_counters import REDIS_URL, redis_is_up

pytestmark = pytest.mark.heavy

RPM = 20
MAX_CONCURRENT = 3


async def sync_chat_route(url: str) -> None:
    db = create_engine(url)
    try:
        async with session_factory(db).begin() as session:
            pools = [EnginePoolSettings(name="default", base_model=MODEL, urls=["http://x"])]
            await sync_routes(session, [RouteSpec(name="chat")], pools)
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def two_gateways(
    tmp_path: Path, store: str, limits: dict[str, int], **env: str
) -> AsyncIterator[tuple[list[GatewayProcess], FakeEngine, dict[str, str]]]:
    """Two gateway processes on one PostgreSQL database, counting on ``store``, one fake
    engine, and the headers of a key with ``limits``."""
    if store == "redis" and not redis_is_up():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/test.sh starts it)")
    if store == "redis":
        env["LORAGATE_REDIS_URL"] = REDIS_URL
    engine = await FakeEngine().start()
    async with fresh_database("postgres", tmp_path) as url:
        key = await insert_key(url, Role.APP, limits=limits)
        gateways = [GatewayProcess(tmp_path / f"gw{i}", url, engine.url, **env) for i in range(2)]
        try:
            await sync_chat_route(url)
            for gateway in gateways:
                gateway.start()
            await asyncio.gather(*(g.ready() for g in gateways))
            yield gateways, engine, {"Authorization": f"Bearer {key}"}
        finally:
            for gateway in gateways:
                gateway.stop()
            await engine.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_gateways_share_one_limit(tmp_path: Path, store: str) -> None:
    limits = {"rpm": RPM, "max_concurrent": MAX_CONCURRENT}
    async with (
        two_gateways(tmp_path, store, limits) as (gateways, engine, headers),
        httpx.AsyncClient(timeout=60) as client,
    ):
        # The sliding window lets the previous minute's count fade out: start early in a minute
        # so that the whole count falls in one.
        await wait_until(lambda: time.time() % 60 < 30, timeout_s=40, what="an early second")
        # Concurrency first: slow answers, six at once, alternating between gateways.
        engine.default.delay_s = 10.0
        urls = itertools.cycle(g.url for g in gateways)
        slow = await asyncio.gather(
            *(
                client.post(f"{next(urls)}/v1/chat/completions", json=chat_body(), headers=headers)
                for _ in range(6)
            )
        )
        slow_codes = sorted(r.status_code for r in slow)
        assert slow_codes.count(200) <= MAX_CONCURRENT, slow_codes
        assert slow_codes.count(200) >= 1 and set(slow_codes) <= {200, 429}
        # Then the rate: 2 x RPM fast requests, alternating; RPM of them in all may pass (the
        # slow ones above count too).
        engine.default.delay_s = 0.0
        fast = []
        for i in range(2 * RPM):
            url = f"{gateways[i % 2].url}/v1/chat/completions"
            fast.append(await client.post(url, json=chat_body(), headers=headers))
    passed = slow_codes.count(200) + sum(r.status_code == 200 for r in fast)
    per_gateway = [sum(r.status_code == 200 for r in fast[i::2]) for i in range(2)]
    assert passed <= RPM, (passed, per_gateway)
    if store == "postgres":
        assert passed == RPM  # exact on the database
    assert all(n > 0 for n in per_gateway)  # both gateways served, both refused
    refusals = [r for r in fast if r.status_code == 429]
    assert refusals and all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refusals)


BURST = 300
BURST_RPM = 30


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_burst_across_two_gateways_never_opens_the_limit(
    tmp_path: Path, store: str
) -> None:
    """300 requests at once, alternating gateways, one key at 30 a minute, limits set to fail
    open: the queue the burst makes on the key's counters is not an outage."""
    # One connection per request, none reused: a pooled connection the gateway closes as idle
    # while the client sends on it, or one whose headers a loaded client takes more than the
    # default 10 s to write, is a connection fault, not the limit under test.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    slow_client = {"LORAGATE_CLIENT_HEADER_TIMEOUT_S": "120"}
    async with (
        two_gateways(
            tmp_path,
            store,
            {"rpm": BURST_RPM},
            LORAGATE_LIMITS_WHEN_STORE_DOWN="open",
            **slow_client,
        ) as (gateways, _, headers),
        httpx.AsyncClient(timeout=120, limits=limits) as client,
    ):
        await wait_until(lambda: time.time() % 60 < 30, timeout_s=40, what="an early second")
        answers = await asyncio.gather(
            *(
                client.post(f"{gateways[i % 2].url}/v1/chat/completions", json=chat_body(),
                            headers=headers)
                for i in range(BURST)
            ),
            return_exceptions=True,
        )  # fmt: skip
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert not failed, (failed[:3], [g.tail() for g in gateways])
    codes = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    allowed = codes.count(200)
    print(f"\n{store}: {allowed} allowed of {BURST} (limit {BURST_RPM}); 429: "
          f"{codes.count(429)}, 503: {codes.count(503)}")  # fmt: skip
    assert set(codes) <= {200, 429, 503}, codes
    assert 0 < allowed <= BURST_RPM, codes
