"""Shared fixtures: migrated databases (SQLite and PostgreSQL), fake engines, a running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import io
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select

from service.auth import Role
from service.db.migrations import ALEMBIC_DIR, upgrade
from service.db.models import ApiKey, RequestRecord
from service.db.session import create_engine, session_factory
from service.keys.credentials import generate_key
from service.main import create_app
from service.settings import EnginePoolSettings, Settings
from tests.fake_engine import MODEL, FakeEngine

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REAL_TIER = "tests/real/"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis names each of its items `test[OPERATION]` but, under pytest 9, gives them all
    the id of the test function. xdist tells items apart by id: it would run one operation per
    test and silently drop the rest. Each such item gets its name in its id."""
    from _pytest.nodeid import coerce_node_id

    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1 and item.name.endswith("]"):
            module = item.nodeid.rsplit("::", 1)[0]
            item._id = coerce_node_id(f"{module}::{item.name}")  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under xdist (`-n 2`, as scripts/test.sh runs) every real-vLLM test runs on one worker,
    one after another, and that tier is handed out first: vLLM's CPU worker busy-polls a core,
    so two engines at once on two cores starve each other, while the other worker runs the rest
    of the suite beside the one engine. Every other test is a unit of its own. (The scope is
    chosen here, from the node id: xdist's own `loadgroup` marks do not group under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class EngineTierTogether(LoadScopeScheduling):
        def schedule(self) -> None:
            collected = next(iter(self.registered_collections.values()), [])
            twice = [n for n, count in Counter(collected).items() if count > 1]
            # Items are told apart by id here: a shared id would run once and drop the others.
            assert not twice, f"tests sharing an id would not all run: {twice[:3]}"
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return "engine" if nodeid.startswith(REAL_TIER) else nodeid

    return EngineTierTogether(config, log)


# Migrated databases are copied from a template built once per schema (every test migrating
# its own took most of the suite's database setup time).
TEMPLATES = Path(tempfile.gettempdir()) / "loragate-test-templates"


@functools.cache
def schema_hash() -> str:
    """Changes whenever a migration (or Alembic's env) does."""
    digest = hashlib.sha256()
    for path in sorted(ALEMBIC_DIR.rglob("*.py")):
        digest.update(path.relative_to(ALEMBIC_DIR).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def pg_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def _sqlite_template() -> Path:
    template = TEMPLATES / f"{schema_hash()}.db"
    if not template.exists():
        TEMPLATES.mkdir(exist_ok=True)
        building = TEMPLATES / f"building-{uuid.uuid4().hex}.db"
        await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{building}")
        with contextlib.closing(sqlite3.connect(building)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the one file
        os.replace(building, template)  # a racing builder's template is just as complete
    return template


async def _pg_template() -> str:
    template = f"lg_template_{schema_hash()}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", template):
            return template
    finally:
        await conn.close()
    building = await _create_pg_database()
    await asyncio.to_thread(upgrade, pg_url(building))
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
    except asyncpg.DuplicateDatabaseError:
        await conn.execute(f'DROP DATABASE "{building}"')  # another process built it first
    finally:
        await conn.close()
    return template


async def _create_pg_database(template: str | None = None) -> str:
    name = f"lg_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await conn.close()
    return name


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# A migrated PostgreSQL database a test is done with is emptied back to the template's contents
# and handed, under a new name, to this process's next test, instead of being dropped and another
# created: on a loaded 2-core machine CREATE and DROP DATABASE took 0.5-2 s per test (both wait
# on the disk), emptying a test's few rows takes milliseconds. One whose schema a test changed,
# or that cannot be emptied, is dropped as before.
_FINGERPRINT = """
SELECT md5(string_agg(part, '|' ORDER BY part)) FROM (
  SELECT 'rel:' || c.relname || ':' || c.relkind::text FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'col:' || a.attrelid::regclass || '.' || a.attname || ':'
      || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull || ':'
      || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL SELECT 'con:' || conrelid::regclass || ':' || conname || ':'
      || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'trg:' || tgrelid::regclass || ':' || tgname || ':' || tgenabled::text
    FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'fn:' || p.oid::regprocedure::text || ':' || md5(p.prosrc)
    FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'type:' || t.typname || ':' || coalesce(
      (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum
       WHERE enumtypid = t.oid), '')
    FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace
  UNION ALL SELECT 'ns:' || nspname FROM pg_namespace
    WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
) AS parts(part)
"""


@dataclass
class _TemplateContents:
    """What a migrated database holds before any test wrote to it."""

    name: str
    fingerprint: str
    tables: list[str]
    rows: dict[str, bytes]  # the rows the migrations insert, per table (COPY's binary format)
    sequences: dict[str, tuple[int, bool]]  # setval's value and is_called, per sequence


_template_contents: _TemplateContents | None = None
_spare_databases: list[tuple[str, str]] = []  # (template, name): clean copies for the next test


async def _read_template(template: str) -> _TemplateContents:
    global _template_contents
    if _template_contents is None or _template_contents.name != template:
        conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{template}")
        try:
            tables = [r[0] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )]  # fmt: skip
            rows: dict[str, bytes] = {}
            for table in tables:
                if await conn.fetchval(f'SELECT EXISTS (SELECT FROM "{table}")'):
                    out = io.BytesIO()
                    await conn.copy_from_table(table, output=out, format="binary")
                    rows[table] = out.getvalue()
            sequences = {
                r["name"]: (r["last_value"] or r["start_value"], r["last_value"] is not None)
                for r in await conn.fetch(
                    "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) AS name,"
                    " last_value, start_value FROM pg_sequences WHERE schemaname = 'public'"
                )
            }
            fingerprint = await conn.fetchval(_FINGERPRINT)
        finally:
            await conn.close()
        _template_contents = _TemplateContents(template, fingerprint, tables, rows, sequences)
    return _template_contents


async def _empty_for_reuse(name: str, template: str) -> str | None:
    """Cut every connection to database ``name``, rename it (a process a test left behind
    cannot find it again) and put back the template's contents: its new name. None where its
    schema is no longer the template's or it could not be emptied; it is dropped then."""
    contents = await _read_template(template)
    fresh = f"lg_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'ALTER DATABASE "{name}" RENAME TO "{fresh}"')
    except asyncpg.PostgresError:
        await _drop_pg_database(name)  # someone connected again in between
        return None
    finally:
        await conn.close()
    emptied = False
    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{fresh}")
    try:
        if await conn.fetchval(_FINGERPRINT) == contents.fingerprint:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
                for table in contents.tables:
                    await conn.execute(f'DELETE FROM "{table}"')
                for table, data in contents.rows.items():
                    await conn.copy_to_table(table, source=io.BytesIO(data), format="binary")
                for sequence, (value, called) in contents.sequences.items():
                    await conn.execute("SELECT setval($1, $2, $3)", sequence, value, called)
            emptied = True
    except asyncpg.PostgresError:
        pass  # dropped below
    finally:
        await conn.close()
    if not emptied:
        await _drop_pg_database(fresh)
        return None
    return fresh


async def _drop_spare_databases() -> None:
    while _spare_databases:
        await _drop_pg_database(_spare_databases.pop()[1])


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _spare_databases:
        asyncio.run(_drop_spare_databases())


@contextlib.asynccontextmanager
async def fresh_database(kind: str, tmp_path: Path, *, migrate: bool = True) -> AsyncIterator[str]:
    """A database URL of the given kind ("sqlite" or "postgres") that no other test uses:
    migrated to the newest revision (the template's schema and rows), or empty."""
    if kind == "sqlite":
        path = tmp_path / f"lg-{uuid.uuid4().hex[:8]}.db"
        if migrate:
            shutil.copyfile(await _sqlite_template(), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if not migrate:
        name = await _create_pg_database()
        try:
            yield pg_url(name)
        finally:
            await _drop_pg_database(name)
        return
    template = await _pg_template()
    spare = [i for i, (of, _) in enumerate(_spare_databases) if of == template]
    name = _spare_databases.pop(spare[-1])[1] if spare else await _create_pg_database(template)
    try:
        yield pg_url(name)
    finally:
        reusable = await _empty_for_reuse(name, template)
        if reusable is not None:
            _spare_databases.append((template, reusable))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database, once on SQLite and once on PostgreSQL."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = await FakeEngine().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def engine2() -> AsyncIterator[FakeEngine]:
    fake = await FakeEngine().start()
    yield fake
    await fake.stop()


async def insert_key(
    url: str, role: Role, routes: list[str] | None = None, limits: dict[str, Any] | None = None
) -> str:
    new = generate_key()
    db = create_engine(url)
    try:
        async with session_factory(db).begin() as session:
            session.add(
                ApiKey(
                    id=new.key_id,
                    name=f"test {role.value}",
                    role=role.value,
                    secret_hash=new.secret_hash,
                    allowed_routes=routes,
                    created_at=datetime.now(UTC),
                    limits=limits,
                )
            )
    finally:
        await db.dispose()
    return new.plaintext


def make_settings(url: str, tmp_path: Path, engine_urls: list[str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "data_dir": tmp_path,
        "engines": [EnginePoolSettings(name="default", base_model=MODEL, urls=engine_urls)],
        "health_probe_interval_s": 0.2,
        "eject_for_s": 30.0,
        "record_flush_interval_s": 0.02,
        "snapshot_refresh_s": 0.2,
        "first_byte_timeout_s": 5.0,
        "idle_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Harness:
    """A started gateway app, an httpx client on it, and keys of every role."""

    app: FastAPI
    client: httpx.AsyncClient
    url: str
    keys: dict[Role, str] = field(default_factory=dict)

    def auth(self, role: Role = Role.APP) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    async def metrics(self) -> str:
        """The /metrics text (it needs an sre or admin key)."""
        response = await self.client.get("/metrics", headers=self.auth(Role.SRE))
        assert response.status_code == 200, response.text
        return response.text

    async def records(self, expected: int, timeout_s: float = 30.0) -> list[RequestRecord]:
        """Wait until at least ``expected`` records are written, then return them, oldest first;
        fail the test when fewer are there after ``timeout_s``."""
        gw = self.app.state.gateway
        rows: list[RequestRecord] = []

        async def enough() -> bool:
            nonlocal rows
            async with gw.sessions() as session:
                query = select(RequestRecord).order_by(RequestRecord.created_at)
                rows = list((await session.scalars(query)).all())
            return len(rows) >= expected

        await wait_until(enough, timeout_s, f"{expected} records")
        return rows


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **app_kwargs: Any) -> AsyncIterator[Harness]:
    url = settings.effective_database_url
    keys = {role: await insert_key(url, role) for role in Role}
    app = create_app(settings, **app_kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Harness(app, client, url, keys)


@pytest.fixture
async def gateway(sqlite_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    """The gateway on SQLite in front of one fake engine."""
    async with running_gateway(make_settings(sqlite_url, tmp_path, [engine.url])) as harness:
        yield harness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a real port (for tests that need real disconnects)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def chat_body(route: str = "chat", **extra: Any) -> dict[str, Any]:
    return {"model": route, "messages": [{"role": "user", "content": "hi"}], **extra}


async def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "the condition"
) -> None:
    """Poll ``predicate`` (sync or async) until it is truthy; fail the test after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def machine_cache() -> Path:
    """What tests keep between runs on one machine (LORAGATE_TEST_MODEL_CACHE)."""
    default = Path.home() / ".cache" / "loragate-test"
    return Path(os.environ.get("LORAGATE_TEST_MODEL_CACHE", default))


def prepared_model() -> Path:
    """The bundled model, converted once per machine (about 40 s) and reused by later runs."""
    out = machine_cache() / "smollm2-135m-instruct"
    subprocess.run([sys.executable, "-m", "service.engine.model_prep", str(out)], check=True)
    return out


def training_cache() -> Path:
    """The training cache every real test's CLI uses: a demo version is trained once per machine
    (training is content-addressed, so a hit is what the same run would write)."""
    return machine_cache() / "training-cache"


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`loragate adapters demo` once per session into a directory of its own: `good`, `bad` and
    `good2`, through the machine's training cache. It runs early on the worker beside the real
    tier (tests/adapters/test_demo.py), so the tutorial's own `adapters demo`, the same inputs,
    copies these runs (or waits for them: one run per key at a time) instead of training."""
    work = tmp_path_factory.mktemp("demo-set")
    env = {**os.environ, "LORAGATE_DATA_DIR": str(work),
           "LORAGATE_TRAINING_CACHE_DIR": str(training_cache())}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "service", "adapters", "demo", "--out", str(work / "demo"),
         "--base-model-dir", str(prepared_model())],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "demo"
