"""Run Alembic migrations and check that a database is at the newest revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.session import shown_url
from service.errors import DatabaseNotMigrated

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: runs in its own event loop (env.py), so call it outside a running loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Undo migrations down to ``revision`` (``-1``: one step; ``base``: all). Blocking, like
    ``upgrade``. What the undone migrations added is dropped, with its data."""
    command.downgrade(alembic_config(database_url), revision)


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def head_revision() -> str | None:
    return _scripts().get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def no_database(where: str, detail: str = "") -> DatabaseNotMigrated:
    return DatabaseNotMigrated(
        f"no loragate database at {where}{detail}: run `loragate db upgrade` first, or set "
        "LORAGATE_DATA_DIR / LORAGATE_DATABASE_URL to the server's"
    )


async def ensure_migrated(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        current = await connection.run_sync(_current)
    scripts = await asyncio.to_thread(_scripts)
    head = scripts.get_current_head()
    where = shown_url(engine.url)
    if current is None:
        raise no_database(where, f" (revision none, the code needs {head})")
    if current != head and not _known(scripts, current):
        raise DatabaseNotMigrated(
            f"the database at {where} is at revision {current}, which this version of loragate "
            f"does not know (it needs {head}): was it migrated by a newer release?"
        )
    if current != head:
        raise DatabaseNotMigrated(
            f"the database at {where} is at revision {current}, the code needs {head}: "
            "run `loragate db upgrade` first"
        )
