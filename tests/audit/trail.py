"""Helpers of the audit tests: events written through ``record_event`` (the one writer) at
chosen times, raw SQL as someone with database access would run it, and ``audit verify``."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

import service.audit.events
from service.audit.actor import Actor
from service.audit.events import record_event
from service.cli.app import app
from service.db.session import create_engine, session_factory

ALICE = Actor("cli", None, "alice")


async def write_events(
    url: str,
    times: list[datetime],
    monkeypatch: pytest.MonkeyPatch,
    *,
    key: str = "",
    actors: list[str] | None = None,
) -> None:
    """One audited change per time, each in its own transaction, written at that time."""
    engine = create_engine(url)
    sessions = session_factory(engine, audit_signing_key=key)
    try:
        with monkeypatch.context() as clock:
            for n, at in enumerate(times):
                clock.setattr(service.audit.events, "now", lambda at=at: at)
                actor = Actor(actors[n], None) if actors else ALICE
                async with sessions.begin() as session:
                    await record_event(
                        session, actor, "key.create", f"key:{n}",
                        after={"n": n, "pair": (1, 2.5), "note": "é"},
                    )  # fmt: skip
    finally:
        await engine.dispose()


async def run_sql(url: str, *statements: str) -> None:
    """Each statement in a transaction of its own, as typed into psql or sqlite3."""
    engine = create_engine(url)
    try:
        for statement in statements:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


def verify(*args: str) -> Result:
    """``loragate audit verify`` on the database LORAGATE_DATABASE_URL names."""
    return CliRunner().invoke(app, ["audit", "verify", *args])
