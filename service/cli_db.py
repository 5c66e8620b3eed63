"""How CLI commands open the server's database: never create one, and say where they looked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.cli_http import fail
from service.db.migrations import ensure_migrated, no_database
from service.db.session import create_engine, shown_url, sqlite_file
from service.errors import DatabaseNotMigrated
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


def run_db(settings: Settings, run: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``run``; a database that is missing, unmigrated or failing becomes a CLI error."""
    try:
        return asyncio.run(run())
    except DatabaseNotMigrated as exc:
        raise fail(str(exc)) from exc
    except (SQLAlchemyError, OSError) as exc:
        where = shown_url(settings.effective_database_url)
        raise fail(f"cannot use the database at {where}: {type(exc).__name__}: {exc}") from exc
