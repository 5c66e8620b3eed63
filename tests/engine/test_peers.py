"""The pieces that keep gateways in step on PostgreSQL, one at a time: a change is heard only
when its transaction commits, the listener comes back after its connection is cut, and
each gateway's row tells the others which versions it still needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.change_listener import ChangeListener
from service.db.models import ApiKey, GatewayPeer
from service.db.session import create_engine, session_factory
from service.engine.peers import Peers, Presence
from service.keys import store as key_store
from service.routes.view import Snapshot
from tests.conftest import fresh_database, wait_until

pytestmark = pytest.mark.postgres

RENAME_ROUTES = text("UPDATE routes SET description = description || '.'")


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with fresh_database("postgres", tmp_path) as url:
        engine = create_engine(url)
        yield engine
        await engine.dispose()


@contextlib.asynccontextmanager
async def listening(engine: AsyncEngine, heard: list[str]) -> AsyncIterator[ChangeListener]:
    listener = ChangeListener(
        engine, lambda: heard.append("change"), check_s=0.2, backoff_s=(0.05, 0.5)
    )
    task = asyncio.create_task(listener.run())
    try:
        await wait_until(listener.connected.is_set, timeout_s=20, what="the listener")
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_change_is_heard_when_it_commits_and_not_when_it_rolls_back(
    pg: AsyncEngine,
) -> None:
    heard: list[str] = []
    sessions = session_factory(pg)
    async with listening(pg, heard):
        await wait_until(lambda: heard, what="the reload after connecting")
        heard.clear()
        with contextlib.suppress(RuntimeError):
            async with sessions.begin() as session:
                await session.execute(RENAME_ROUTES)
                raise RuntimeError("rolled back")
        await asyncio.sleep(0.5)
        assert heard == []
        async with sessions.begin() as session:
            await session.execute(RENAME_ROUTES)
        await wait_until(lambda: heard, timeout_s=10, what="the committed change")


async def test_revoking_a_key_is_heard(pg: AsyncEngine) -> None:
    heard: list[str] = []
    sessions = session_factory(pg)
    async with sessions.begin() as session:
        session.add(
            ApiKey(
                id="k1", name="k", role="app", secret_hash="0" * 64, allowed_routes=None,
                created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    async with listening(pg, heard):
        await wait_until(lambda: heard, what="the reload after connecting")
        heard.clear()
        async with sessions.begin() as session:
            assert await key_store.revoke_key(session, "k1", datetime.now(UTC))
        await wait_until(lambda: heard, timeout_s=10, what="the revocation")


async def test_the_listener_comes_back_after_its_connection_is_cut(pg: AsyncEngine) -> None:
    heard: list[str] = []
    sessions = session_factory(pg)
    args, kwargs = pg.dialect.create_connect_args(pg.url)
    async with listening(pg, heard):
        await wait_until(lambda: heard, what="the reload after connecting")
        admin = await asyncpg.connect(*args, **kwargs)
        try:
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await admin.close()
        assert cut == 1
        # Reconnected, it reloads once (it may have missed something), then hears changes again.
        await wait_until(lambda: len(heard) >= 2, timeout_s=20, what="the reload on reconnecting")
        count = len(heard)
        async with sessions.begin() as session:
            await session.execute(RENAME_ROUTES)
        await wait_until(lambda: len(heard) > count, timeout_s=10, what="a change after it")


async def test_a_gateway_sees_what_other_live_gateways_still_need(pg: AsyncEngine) -> None:
    sessions = session_factory(pg)

    def peer(name: str) -> Peers:
        return Peers(sessions, Snapshot, [], heartbeat_s=1, stale_after_s=5, gateway=name)

    a, b, c = peer("a"), peer("b"), peer("c")
    await a.publish(Presence(("x@1",), {}))
    await b.publish(Presence(("x@2",), {"x@1": 2, "y@1": 0}))
    assert await c.busy_elsewhere() == {"x@1", "x@2"}
    assert await a.busy_elsewhere() == {"x@1", "x@2"}  # b still has requests on x@1
    await b.publish(Presence(("x@2",), {}))
    assert await a.busy_elsewhere() == {"x@2"}
    # A gateway whose heartbeat is old is dead: its row holds nothing back.
    async with sessions.begin() as session:
        await session.execute(
            update(GatewayPeer)
            .where(GatewayPeer.id == "b")
            .values(heartbeat_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    assert await a.busy_elsewhere() == frozenset()
    assert await b.busy_elsewhere() == {"x@1"}
    await a.leave()
    assert await c.busy_elsewhere() == frozenset()
