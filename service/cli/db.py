"""How CLI commands open the server's database: never create one, and say where they looked.

``with_sessions`` is the one runner every database command goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from service.cli.common import fail
from service.db.migrations import ensure_migrated, no_database
from service.db.session import create_engine, session_factory, shown_url, sqlite_file
from service.errors import DatabaseNotMigrated, GatewayError
from service.settings import Settings

T = TypeVar("T")


@contextlib.asynccontextmanager
async def migrated_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The configured database, refused unless migrated to the code's revision.

    A SQLite file that is not there is reported before connecting: connecting would leave an
    empty file behind (only ``loragate db upgrade`` creates the database).
    """
    url = settings.effective_database_url
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise no_database(shown_url(url))
    engine = create_engine(url)
    try:
        await ensure_migrated(engine)
        yield engine
    finally:
        await engine.dispose()


def with_sessions(settings: Settings, work: Callable[[async_sessionmaker[Any]], Awaitable[T]]) -> T:
    """Run ``work`` on the migrated database; what goes wrong becomes a CLI error.

    A missing, unmigrated or failing database says where it looked; a refusal by the domain
    (``GatewayError``) prints its message.
    """

    async def run() -> T:
        async with migrated_engine(settings) as engine:
            key = settings.audit_signing_key.get_secret_value()
            return await work(session_factory(engine, audit_signing_key=key))

    try:
        return asyncio.run(run())
    except DatabaseNotMigrated as exc:
        raise fail(str(exc)) from exc
    except GatewayError as exc:
        raise fail(exc.message) from exc
    except (SQLAlchemyError, OSError) as exc:
        where = shown_url(settings.effective_database_url)
        raise fail(f"cannot use the database at {where}: {type(exc).__name__}: {exc}") from exc


def with_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, write: bool = False
) -> T:
    """``work`` in one session; with ``write``, in one transaction that commits at the end."""

    async def run(sessions: async_sessionmaker[Any]) -> T:
        if write:
            async with sessions.begin() as session:
                return await work(session)
        async with sessions() as session:
            return await work(session)

    return with_sessions(settings, run)
