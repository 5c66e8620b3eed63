"""The snapshot's periodic refresh on SQLite: it reloads after any commit, by this process or
another, and not while nothing was committed (PRAGMA data_version)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys

from sqlalchemy.engine import make_url

from service.auth import Role, split_key
from service.db.data_version import DataVersion
from service.db.session import create_engine, session_factory
from service.routes.snapshot import SnapshotStore
from service.routes.view import Snapshot
from tests.conftest import insert_key, wait_until


class CountedReads(DataVersion):
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


def commit_from_another_process(path: str) -> None:
    script = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); " \
        "db.execute(\"UPDATE api_keys SET name = name || '.'\"); db.commit()"  # fmt: skip
    subprocess.run([sys.executable, "-c", script, path], check=True, timeout=60)


async def test_the_version_moves_with_every_commit_of_another_connection(sqlite_url: str) -> None:
    probe = DataVersion.of(sqlite_url)
    assert probe is not None
    try:
        first = await probe.read()
        assert await probe.read() == first  # nothing committed meanwhile
        await insert_key(sqlite_url, Role.APP)  # another connection in this process
        second = await probe.read()
        assert second != first
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url))
        assert await probe.read() != second
        # The probe holds no read transaction open between reads, which would keep the WAL
        # from being reset: a truncating checkpoint is not blocked by it.
        with contextlib.closing(sqlite3.connect(sqlite_path(sqlite_url))) as db:
            assert db.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
            [(blocked, _, _)] = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert blocked == 0
    finally:
        probe.close()


def test_only_sqlite_files_get_a_probe() -> None:
    assert DataVersion.of("postgresql+asyncpg://postgres@127.0.0.1:5432/test") is None
    assert DataVersion.of("sqlite+aiosqlite:///:memory:") is None
    assert DataVersion.of("sqlite+aiosqlite:////tmp/x.db") is not None


async def test_the_refresh_reloads_after_a_commit_and_not_before(sqlite_url: str) -> None:
    probe = CountedReads(sqlite_path(sqlite_url))
    db = create_engine(sqlite_url)
    store = SnapshotStore(session_factory(db), 0.02, data_version=probe)
    reloads: list[Snapshot] = []
    store.on_reload.append(lambda _old, new: reloads.append(new))
    refresh = asyncio.create_task(store.run())
    try:
        await wait_until(lambda: len(reloads) == 1, what="the first load")
        ticks = probe.reads
        await wait_until(lambda: probe.reads >= ticks + 5, what="five more refresh ticks")
        assert len(reloads) == 1  # nothing was committed: no reload

        key = await insert_key(sqlite_url, Role.APP)
        key_id = split_key(key)[0]
        await wait_until(lambda: key_id in store.current.keys, what="the new key in the snapshot")

        seen = len(reloads)
        await asyncio.to_thread(commit_from_another_process, sqlite_path(sqlite_url))
        await wait_until(lambda: len(reloads) > seen, what="a reload after another's commit")

        seen = len(reloads)
        store.wake()  # an explicit wake reloads whatever the version says
        await wait_until(lambda: len(reloads) > seen, what="a reload when woken")
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        store.close()
        await db.dispose()
