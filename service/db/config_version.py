"""Whether what the snapshot holds changed, on SQLite: ``config_version.n``, on a connection of
its own.

Triggers (migration 0014) count every change to routes, keys, adapter versions and a rollout's
traffic, whoever makes it. Reading the count costs a fraction of a millisecond where reloading
the snapshot costs several queries, so a gateway on SQLite reloads only after such a change;
the records its shipper commits all the time do not count.
"""

from __future__ import annotations

import asyncio
import sqlite3

from sqlalchemy.engine import make_url


class ConfigVersionReader:
    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, database_url: str) -> ConfigVersionReader | None:
        """A reader for a SQLite file URL; None for other databases and in-memory SQLite."""
        url = make_url(database_url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return cls(url.database)

    async def read(self) -> int:
        async with self._lock:  # one call at a time on the connection, from any worker thread
            return await asyncio.to_thread(self._read)

    def _read(self) -> int:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None
            )
        # fetchall and close: a statement left unfinished would hold a read transaction open,
        # and an open reader keeps SQLite from resetting its WAL file.
        cursor = self._connection.execute("SELECT n FROM config_version")
        try:
            [(version,)] = cursor.fetchall()
        finally:
            cursor.close()
        return int(version)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
