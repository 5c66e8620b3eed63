"""Persistence: migrations, keys through the snapshot, routes sync, records through the gateway.

Every test that takes ``db_url`` (or ``unmigrated_url``) runs once on SQLite and once on
PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from monitoring.metrics import Metrics
from rollout.store import active_splits
from service.auth import Role
from service.db import repositories
from service.db.migrations import _current, ensure_migrated, head_revision
from service.db.models import RequestRecord, Route
from service.db.session import SQLITE_BUSY_TIMEOUT_MS, create_engine, session_factory
from service.errors import AuthenticationFailed, DatabaseNotMigrated
from service.keys import store as key_store
from service.keys.credentials import split_key, verify
from service.main import create_app
from service.routes.config import RoutesConfigError, RouteSpec, load_routes_file, sync_routes
from service.routes.snapshot import SnapshotStore
from service.settings import EnginePoolSettings
from tests.conftest import (
    chat_body,
    fresh_database,
    insert_key,
    make_settings,
    running_gateway,
    wait_until,
)
from tests.fake_engine import MODEL, FakeEngine

TABLES = {"api_keys", "routes", "request_records", "alembic_version"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database that no migration has touched, on SQLite and on PostgreSQL."""
    async with fresh_database(request.param, tmp_path, migrate=False) as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _count(engine: AsyncEngine, model: type[Any]) -> int:
    async with session_factory(engine)() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


# -- migrations -------------------------------------------------------------------------------


async def test_migrations_create_the_tables(db: AsyncEngine) -> None:
    assert await _tables(db) >= TABLES
    async with db.connect() as conn:
        assert await conn.run_sync(_current) == head_revision()
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("request_records")}
        )
    assert {"id", "created_at", "route", "arm", "status_code", "latency_ms"} <= columns
    await ensure_migrated(db)  # does not raise


async def test_models_match_the_migration(db: AsyncEngine) -> None:
    """The ORM models and the Alembic revision describe the same schema (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from service.db import evaluation_models  # noqa: F401 (its tables join the metadata)
    from service.db.models import Base

    def diff(conn: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)

    async with db.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_unmigrated_database_is_refused(unmigrated_url: str) -> None:
    engine = create_engine(unmigrated_url)
    try:
        with pytest.raises(DatabaseNotMigrated) as caught:
            await ensure_migrated(engine)
        message = str(caught.value)
        assert "loragate db upgrade" in message
        assert "none" in message and str(head_revision()) in message
        assert not (await _tables(engine)) & TABLES  # the check itself creates nothing
    finally:
        await engine.dispose()


async def test_gateway_refuses_to_start_on_an_unmigrated_database(
    unmigrated_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    app = create_app(make_settings(unmigrated_url, tmp_path, [engine.url]))
    try:
        with pytest.raises(DatabaseNotMigrated, match="loragate db upgrade"):
            async with app.router.lifespan_context(app):
                pytest.fail("the gateway started on an unmigrated database")
        assert not (await _tables(app.state.gateway.db)) & TABLES
    finally:
        await app.state.gateway.db.dispose()
    assert engine.requests == []


async def test_sqlite_uses_wal_durable_commits_and_a_busy_timeout(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            assert timeout == SQLITE_BUSY_TIMEOUT_MS
            # 2 is FULL: the WAL is synced at each commit (NORMAL, 1, only at checkpoints).
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2
    finally:
        await engine.dispose()
    # WAL is a property of the file: a plain connection that sets nothing sees it too.
    path = make_url(sqlite_url).database
    assert path is not None
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'dir' / 'lg.db'}"
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
    finally:
        await engine.dispose()
    assert (tmp_path / "nested" / "dir" / "lg.db").exists()


# -- keys -------------------------------------------------------------------------------------


async def test_snapshot_finds_keys_and_forgets_revoked_ones(db_url: str, db: AsyncEngine) -> None:
    sessions = session_factory(db)
    store = SnapshotStore(sessions, refresh_s=60.0, splits=active_splits)
    first_id, _ = split_key(await insert_key(db_url, Role.APP, ["chat"]))
    await store.reload()
    assert store.loaded
    assert set(store.current.keys) == {first_id}
    found = await store.find_key(first_id)
    assert found is not None
    assert found.principal.role is Role.APP
    assert found.principal.allowed_routes == frozenset({"chat"})
    assert found.principal.may_use_route("chat") and not found.principal.may_use_route("other")

    # Created after the reload: not in the snapshot, but found through the database on a miss.
    late_id, _ = split_key(await insert_key(db_url, Role.SRE))
    assert late_id not in store.current.keys
    late = await store.find_key(late_id)
    assert late is not None and late.principal.role is Role.SRE
    assert late.principal.allowed_routes is None

    assert await store.find_key("0123456789ab") is None

    async with sessions.begin() as session:
        assert await key_store.revoke_key(session, first_id, datetime.now(UTC))
    async with sessions.begin() as session:
        assert not await key_store.revoke_key(session, first_id, datetime.now(UTC))
    await store.reload()
    assert first_id not in store.current.keys
    assert late_id in store.current.keys
    assert await store.find_key(first_id) is None


async def test_verify_checks_the_secret(db_url: str, db: AsyncEngine) -> None:
    store = SnapshotStore(session_factory(db), refresh_s=60.0, splits=active_splits)
    key_id, secret = split_key(await insert_key(db_url, Role.REVIEWER))
    await store.reload()
    stored = await store.find_key(key_id)

    principal = verify(stored, secret)
    assert principal.key_id == key_id and principal.role is Role.REVIEWER

    with pytest.raises(AuthenticationFailed):
        verify(stored, secret + "x")
    with pytest.raises(AuthenticationFailed):
        verify(stored, "")
    # An unknown id: the lookup finds nothing and verify refuses the same way.
    with pytest.raises(AuthenticationFailed):
        verify(await store.find_key("ffffffffffff"), secret)


@pytest.mark.parametrize("presented", ["", "lg-", "lg-abc", "lg--secret", "xx-abc-secret", "abc"])
def test_malformed_keys_are_refused(presented: str) -> None:
    with pytest.raises(AuthenticationFailed):
        split_key(presented)


# -- routes -----------------------------------------------------------------------------------

POOLS = [
    EnginePoolSettings(name="default", base_model=MODEL, urls=["http://127.0.0.1:9"]),
    EnginePoolSettings(name="big", base_model="big-base", urls=["http://127.0.0.1:9"]),
]

ROUTES_V1 = """
routes:
  - name: chat
    description: General chat
  - name: ticket-triage
    pool: big
    target: big-base
    max_tokens_cap: 512
    default_max_tokens: 128
"""

ROUTES_V2 = """
routes:
  - name: chat
    target: base
    max_tokens_cap: 64
    description: Short chat
  - name: ticket-triage
    pool: big
    target: base
    default_max_tokens: 32
"""


def _routes_file(tmp_path: Path, content: str) -> Path:
    path = tmp_path / f"routes-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(content)
    return path


async def _sync(db: AsyncEngine, path: Path) -> list[str]:
    async with session_factory(db).begin() as session:
        return await sync_routes(session, load_routes_file(path), POOLS)


async def _routes(db: AsyncEngine) -> dict[str, Route]:
    async with session_factory(db)() as session:
        return {r.name: r for r in await repositories.list_routes(session)}


async def test_sync_routes_upserts(db: AsyncEngine, tmp_path: Path) -> None:
    assert await _sync(db, _routes_file(tmp_path, ROUTES_V1)) == ["chat", "ticket-triage"]
    routes = await _routes(db)
    assert set(routes) == {"chat", "ticket-triage"}
    chat, triage = routes["chat"], routes["ticket-triage"]
    # No pool: the first pool; `base`: the pool's base model.
    assert (chat.pool, chat.target, chat.description) == ("default", MODEL, "General chat")
    assert chat.max_tokens_cap is None and chat.default_max_tokens is None
    assert (triage.pool, triage.target) == ("big", "big-base")
    assert (triage.max_tokens_cap, triage.default_max_tokens) == (512, 128)
    first_update = triage.updated_at

    await _sync(db, _routes_file(tmp_path, ROUTES_V2))
    routes = await _routes(db)
    assert await _count(db, Route) == 2
    chat, triage = routes["chat"], routes["ticket-triage"]
    assert (chat.max_tokens_cap, chat.description) == (64, "Short chat")
    assert (triage.target, triage.max_tokens_cap, triage.default_max_tokens) == (
        "big-base",
        None,
        32,
    )
    assert triage.description == ""
    assert triage.updated_at >= first_update

    # The snapshot serves what was synced.
    store = SnapshotStore(session_factory(db), refresh_s=60.0, splits=active_splits)
    await store.reload()
    view = store.current.routes["chat"]
    assert (view.pool, view.target, view.max_tokens_cap) == ("default", MODEL, 64)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "routes:\n  - name: chat\n    pool: nope\n",
            "route 'chat' names pool 'nope'; known pools: ['big', 'default']",
        ),
        (
            "routes:\n  - name: chat\n    target: other-model\n",
            "target 'other-model' is not served by pool 'default'",
        ),
        (
            # A model of another pool is not a valid target for this one.
            "routes:\n  - name: chat\n    pool: default\n    target: big-base\n",
            "target 'big-base' is not served by pool 'default'",
        ),
    ],
    ids=["unknown-pool", "unknown-target", "target-of-another-pool"],
)
async def test_sync_refuses_unresolvable_routes(
    db: AsyncEngine, tmp_path: Path, content: str, message: str
) -> None:
    path = _routes_file(tmp_path, "routes:\n  - name: fine\n" + content.removeprefix("routes:\n"))
    with pytest.raises(RoutesConfigError) as caught:
        await _sync(db, path)
    assert message in str(caught.value)
    assert await _count(db, Route) == 0  # all or nothing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("routes:\n  - name: bad name!\n", "route names are 1-128 letters"),
        ("routes:\n  - name: chat@v2\n", "no '@'"),
        ("routes:\n  - name: ''\n", "route names are 1-128 letters"),
        ("routes:\n  - name: " + "a" * 129 + "\n", "route names are 1-128 letters"),
        ("routes:\n  - name: chat\n  - name: chat\n", "route names must be unique"),
        (
            "routes:\n  - name: chat\n    max_tokens_cap: 10\n    default_max_tokens: 11\n",
            "default_max_tokens must not exceed max_tokens_cap",
        ),
        ("routes:\n  - name: chat\n    max_tokens_cap: 0\n", "max_tokens_cap"),
        ("routes:\n  - name: chat\n    default_max_tokens: -1\n", "default_max_tokens"),
        ("routes:\n  - pool: default\n", "name"),
        ("routes: [\n", "cannot read routes"),
        ("", "cannot read routes"),
        ("- name: chat\n", "cannot read routes"),
    ],
    ids=[
        "bad-name",
        "at-sign",
        "empty-name",
        "long-name",
        "duplicate",
        "default-over-cap",
        "cap-zero",
        "negative-default",
        "missing-name",
        "broken-yaml",
        "empty-file",
        "no-routes-key",
    ],
)
def test_invalid_routes_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = _routes_file(tmp_path, content)
    with pytest.raises(RoutesConfigError) as caught:
        load_routes_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_routes_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RoutesConfigError, match="cannot read routes"):
        load_routes_file(tmp_path / "absent.yaml")


def test_route_spec_validation_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="must not exceed max_tokens_cap"):
        RouteSpec(name="chat", max_tokens_cap=4, default_max_tokens=8)
    with pytest.raises(ValidationError, match="no '@'"):
        RouteSpec(name="chat@1")


# -- through the gateway ----------------------------------------------------------------------


async def test_gateway_records_land_in_the_database(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as gw:
        ok = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=gw.auth())
        assert ok.status_code == 200, ok.text
        streamed = await gw.client.post(
            "/v1/chat/completions", json=chat_body(stream=True), headers=gw.auth()
        )
        assert streamed.status_code == 200, streamed.text
        missing = await gw.client.post(
            "/v1/chat/completions", json=chat_body("no-such-route"), headers=gw.auth()
        )
        assert missing.status_code == 404, missing.text
        rows = await gw.records(3)
        app_key_id, _ = split_key(gw.keys[Role.APP])

    assert len(rows) == 3
    by_status = sorted(rows, key=lambda r: (r.status_code, r.stream))
    plain, stream, failed = by_status
    for row in (plain, stream):
        assert (row.route, row.target, row.arm, row.status_code) == ("chat", MODEL, "stable", 200)
        assert row.key_id == app_key_id
        assert row.replica == engine.url
        assert row.endpoint == "chat"
        assert row.latency_ms > 0
        assert row.tokens_out and row.tokens_out > 0
        assert row.request_body and '"hi"' in row.request_body
    assert (plain.stream, stream.stream) == (False, True)
    assert stream.ttft_ms is not None
    assert failed.status_code == 404 and failed.error_code == "model_not_found"
    assert failed.key_id == app_key_id

    # The lifespan disposed its engine; the rows are really in the database.
    check = create_engine(db_url)
    try:
        assert await _count(check, RequestRecord) == 3
    finally:
        await check.dispose()


async def test_gateway_sees_new_and_revoked_keys(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    settings = make_settings(db_url, tmp_path, [engine.url], snapshot_refresh_s=0.05)
    async with running_gateway(settings) as gw:
        late = await insert_key(db_url, Role.APP)  # after the first snapshot load
        headers = {"Authorization": f"Bearer {late}"}
        r = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert r.status_code == 200, r.text

        key_id, _ = split_key(late)
        async with gw.app.state.gateway.sessions.begin() as session:
            assert await key_store.revoke_key(session, key_id, datetime.now(UTC))

        # Found by its lookup, the key is kept until the next reload, which sees the revocation.
        async def refused() -> bool:
            nonlocal r
            r = await gw.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
            return r.status_code == 401

        await wait_until(refused, what="the revocation")
        assert r.json()["error"]["code"] == "invalid_api_key"


async def test_gateway_start_syncs_routes(db_url: str, tmp_path: Path, engine: FakeEngine) -> None:
    # No routes file and no routes: the default route is created.
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as gw:
        assert set(gw.app.state.gateway.snapshot.current.routes) == {"chat"}

    # A routes file is synced at start, next to what the database already holds.
    path = _routes_file(tmp_path, "routes:\n  - name: triage\n    max_tokens_cap: 99\n")
    settings = make_settings(db_url, tmp_path, [engine.url], routes_file=path)
    async with running_gateway(settings) as gw:
        routes = gw.app.state.gateway.snapshot.current.routes
        assert set(routes) == {"chat", "triage"}
        assert (routes["triage"].target, routes["triage"].max_tokens_cap) == (MODEL, 99)
