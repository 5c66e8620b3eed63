"""The database sees every change to what the gateways' snapshot holds (migration 0014): on
SQLite its triggers count them in ``config_version``, on PostgreSQL they send a NOTIFY. Written
here with plain SQL, as any writer might, and checked one statement at a time."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.change_listener import CHANNEL
from service.db.config_version import ConfigVersionReader
from service.db.session import create_engine
from tests.conftest import wait_until

NOW = datetime(2026, 12, 2, tzinfo=UTC)

# (statement, the table whose change it is; None: a change the snapshot does not hold)
STEPS: list[tuple[str, str | None]] = [
    ("INSERT INTO routes (name, pool, target, description, updated_at, risk) "
     "VALUES ('r', 'default', 'base', '', :now, 'medium')", "routes"),
    ("UPDATE routes SET target = 'other' WHERE name = 'r'", "routes"),
    ("INSERT INTO api_keys (id, name, role, secret_hash, created_at) "
     "VALUES ('k', 'k', 'app', 'h', :now)", "api_keys"),
    ("UPDATE api_keys SET revoked_at = :now WHERE id = 'k'", "api_keys"),
    ("INSERT INTO adapter_versions (id, name, version, sha256, pool, base_model, rank, alpha, "
     "target_modules, size_bytes, store_path, created_at, changelog) VALUES ('a@1', 'a', 1, "
     "'s', 'default', 'base', 8, 16, '[\"q_proj\"]', 1, '/x', :now, '')", "adapter_versions"),
    ("UPDATE adapter_versions SET changelog = 'c' WHERE id = 'a@1'", "adapter_versions"),
    ("INSERT INTO rollouts (id, route, active_route, stable, candidate, spec, phase, step, "
     "step_started_at, failures, inconclusive, verdicts, version, created_at, updated_at) "
     "VALUES ('ro', 'r', 'r', 'base', 'a@1', '{\"steps\": []}', 'pending', 0, :now, 0, 0, '[]', "
     "1, :now, :now)", "rollouts"),
    # An analysis tick that only saves its verdicts leaves the traffic as it was.
    ("UPDATE rollouts SET verdicts = '[{\"gate\": \"errors\"}]', failures = 1, "
     "version = version + 1, updated_at = :now WHERE id = 'ro'", None),
    ("UPDATE rollouts SET phase = 'running', step = 1 WHERE id = 'ro'", "rollouts"),
    ("UPDATE rollouts SET spec = '{\"steps\": [1]}' WHERE id = 'ro'", "rollouts"),
    ("UPDATE rollouts SET paused_phase = 'running', phase = 'paused' WHERE id = 'ro'", "rollouts"),
    ("INSERT INTO request_records (id, created_at, endpoint, arm, stream, status_code, "
     "latency_ms, attempts) VALUES ('q', :now, 'chat', 'stable', false, 200, 1.0, 1)", None),
    ("DELETE FROM rollouts WHERE id = 'ro'", "rollouts"),
    ("DELETE FROM adapter_versions WHERE id = 'a@1'", "adapter_versions"),
    ("DELETE FROM api_keys WHERE id = 'k'", "api_keys"),
    ("DELETE FROM routes WHERE name = 'r'", "routes"),
]  # fmt: skip

# Changes seen since the last call, by table name where the database says which.
Observed = Callable[[], Awaitable[list[str]]]


@contextlib.asynccontextmanager
async def counted(url: str) -> AsyncIterator[Observed]:
    reader = ConfigVersionReader.of(url)
    assert reader is not None
    last = await reader.read()

    async def changes() -> list[str]:
        nonlocal last
        count, last = last, await reader.read()
        return ["?"] * (last - count)

    try:
        yield changes
    finally:
        reader.close()


@contextlib.asynccontextmanager
async def notified(url: str) -> AsyncIterator[Observed]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    listening = await asyncpg.connect(dsn)
    heard: list[str] = []
    await listening.add_listener(CHANNEL, lambda *args: heard.append(args[3]))
    markers = itertools.count()

    async def changes() -> list[str]:
        # Notifications arrive in commit order: once this marker is heard, everything
        # committed before it has been.
        marker = f"marker-{next(markers)}"
        await listening.execute(f"NOTIFY {CHANNEL}, '{marker}'")
        await wait_until(lambda: marker in heard, timeout_s=20, what=marker)
        seen = heard[: heard.index(marker)]
        del heard[: heard.index(marker) + 1]
        return seen

    try:
        yield changes
    finally:
        await listening.close()


async def run(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def test_every_change_to_the_snapshot_is_seen_and_nothing_else(db_url: str) -> None:
    engine = create_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with (counted if sqlite else notified)(db_url) as changes:
            assert await changes() == []
            for statement, table in STEPS:
                await run(engine, statement, now=NOW)
                expected = [] if table is None else ["?" if sqlite else table]
                assert await changes() == expected, statement
    finally:
        await engine.dispose()


async def test_a_change_rolled_back_is_not_seen(db_url: str) -> None:
    engine = create_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with (counted if sqlite else notified)(db_url) as changes:
            async with engine.connect() as conn:
                transaction = await conn.begin()
                await conn.execute(text(STEPS[0][0]), {"now": NOW})
                await transaction.rollback()
            assert await changes() == []
            await run(engine, STEPS[0][0], now=NOW)
            assert len(await changes()) == 1
    finally:
        await engine.dispose()
