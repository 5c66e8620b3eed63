"""Database engine and session factory; SQLite gets WAL, durable commits and a busy timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.dml import Insert

# How long a writer waits for SQLite's write lock. SQLite has no queue for it: a waiter polls,
# and busy writers that come back at once can take it first, so under a burst of writers (and
# durable commits on a slow disk) a wait of seconds is normal; past this the request fails
# (a 503 to API callers) instead of waiting longer.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for other databases, memory and ``file:`` URIs."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database)


def shown_url(url: str | URL) -> str:
    """The URL to show people: the password masked."""
    return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)


def create_engine(url: str) -> AsyncEngine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # FULL: a commit is on disk when it returns. The shipper deletes a spool segment
            # once its rows are committed, and held review items are answered as stored; under
            # NORMAL a power loss could take commits back after either.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


# The ``Session.info`` entry holding the key audit events are signed with (``record_event``
# reads it): the sessions of the gateway and of the CLI carry the configured key.
AUDIT_SIGNING_KEY = "loragate.audit_signing_key"
# A periodic job over the database (retention), run by the record shipper between batches.
Maintenance = Callable[[async_sessionmaker[Any]], Awaitable[None]]


def session_factory(engine: AsyncEngine, *, audit_signing_key: str = "") -> async_sessionmaker[Any]:
    info = {AUDIT_SIGNING_KEY: audit_signing_key.encode()}
    return async_sessionmaker(engine, expire_on_commit=False, info=info)


def insert_ignoring_duplicates(session: AsyncSession, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the session's dialect (SQLite or PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise ValueError(f"unsupported database dialect {dialect!r}")


@asynccontextmanager
async def write_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """A short transaction that commits on exit; on SQLite it holds the write lock from the start.

    Python's sqlite3 would open a deferred transaction, which in WAL mode can fail at once with
    "database is locked" (no busy wait) when a read is followed by a write and another writer
    got in between. ``BEGIN IMMEDIATE`` takes the lock first, waiting at most the busy timeout.
    """
    async with sessions() as session, session.begin():
        connection = await session.connection()
        if connection.dialect.name == "sqlite":
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield session
