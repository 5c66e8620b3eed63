"""The snapshot's periodic refresh: on SQLite it reloads after a change to what it holds, made
by this process or another, and not after other commits (the records' shipper commits all the
time); on PostgreSQL it reloads only while the change listener is down."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys

from sqlalchemy.engine import make_url

from rollout.store import active_splits
from service.auth import Role
from service.db.config_version import ConfigVersionReader
from service.db.session import create_engine, session_factory
from service.keys.credentials import split_key
from service.routes.snapshot import SnapshotStore
from service.routes.view import Snapshot
from tests.conftest import insert_key, wait_until


class CountedReads(ConfigVersionReader):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0

    async def read(self) -> int:
        self.reads += 1
        return await super().read()


def sqlite_path(url: str) -> str:
    path = make_url(url).database
    assert path is not None
    return path


def commit_from_another_process(path: str, statement: str) -> None:
    script = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); " \
        "db.execute(sys.argv[2]); db.commit()"  # fmt: skip
    subprocess.run([sys.executable, "-c", script, path, statement], check=True, timeout=60)


RENAME_KEYS = "UPDATE api_keys SET name = name || '.'"
A_RECORD = (
    "INSERT INTO request_records (id, created_at, endpoint, arm, stream, status_code, "
    "latency_ms, attempts) VALUES (hex(randomblob(8)), '2026-12-02', 'chat', 'stable', 0, 200, "
    "1.0, 1)"
)


async def test_the_count_moves_with_changes_to_the_snapshot_only(sqlite_url: str) -> None:
    probe = ConfigVersionReader.of(sqlite_url)
    assert probe is not None
    try:
        first = await probe.read()
        assert await probe.read() == first  # nothing committed meanwhile
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url), A_RECORD)
        assert await probe.read() == first  # a record is not in the snapshot
        await insert_key(sqlite_url, Role.APP)  # another connection in this process
        second = await probe.read()
        assert second != first
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url), RENAME_KEYS)
        assert await probe.read() != second
        # The probe holds no read transaction open between reads, which would keep the WAL
        # from being reset: a truncating checkpoint is not blocked by it.
        with contextlib.closing(sqlite3.connect(sqlite_path(sqlite_url))) as db:
            assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
            [(blocked, _, _)] = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert blocked == 0
    finally:
        probe.close()


def test_only_sqlite_files_get_a_reader() -> None:
    assert ConfigVersionReader.of("postgresql+asyncpg://postgres@127.0.0.1:5432/test") is None
    assert ConfigVersionReader.of("sqlite+aiosqlite:///:memory:") is None
    assert ConfigVersionReader.of("sqlite+aiosqlite:////tmp/x.db") is not None


async def test_the_refresh_reloads_after_a_change_and_not_before(sqlite_url: str) -> None:
    probe = CountedReads(sqlite_path(sqlite_url))
    db = create_engine(sqlite_url)
    store = SnapshotStore(session_factory(db), 0.02, splits=active_splits, config_version=probe)
    reloads: list[Snapshot] = []
    store.on_reload.append(lambda _old, new: reloads.append(new))
    refresh = asyncio.create_task(store.run())
    try:
        await wait_until(lambda: len(reloads) == 1, what="the first load")
        ticks = probe.reads
        await wait_until(lambda: probe.reads >= ticks + 5, what="five more refresh ticks")
        assert len(reloads) == 1  # nothing was committed: no reload
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url), A_RECORD)
        ticks = probe.reads
        await wait_until(lambda: probe.reads >= ticks + 5, what="five ticks after a record")
        assert len(reloads) == 1  # records are not in the snapshot: no reload

        key = await insert_key(sqlite_url, Role.APP)
        key_id = split_key(key)[0]
        await wait_until(lambda: key_id in store.current.keys, what="the new key in the snapshot")

        seen = len(reloads)
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url), RENAME_KEYS)
        await wait_until(lambda: len(reloads) > seen, what="a reload after another's change")

        seen = len(reloads)
        store.wake()  # an explicit wake reloads whatever the version says
        await wait_until(lambda: len(reloads) > seen, what="a reload when woken")
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        store.close()
        await db.dispose()


class CountedLooks(SnapshotStore):
    looks = 0

    def _may_have_changed(self, version: int | None) -> bool:
        self.looks += 1
        return super()._may_have_changed(version)


async def test_while_changes_are_heard_the_refresh_does_not_reload(sqlite_url: str) -> None:
    """PostgreSQL's way, without its reader: ``listening`` is the change listener's state."""
    db = create_engine(sqlite_url)
    listening = asyncio.Event()
    listening.set()
    store = CountedLooks(session_factory(db), 0.02, splits=active_splits, listening=listening)
    reloads: list[Snapshot] = []
    store.on_reload.append(lambda _old, new: reloads.append(new))
    refresh = asyncio.create_task(store.run())
    try:
        await store.reload()
        await wait_until(lambda: store.looks >= 5, what="five refresh ticks")
        assert len(reloads) == 1  # heard nothing: no reload

        store.wake()  # what the listener calls for each change
        await wait_until(lambda: len(reloads) == 2, what="a reload when woken")

        listening.clear()  # the listener lost its connection: reload every tick
        await wait_until(lambda: len(reloads) >= 5, what="reloads while not listening")
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        await db.dispose()
