"""Which database errors are an outage (retry; 503) and which a refusal (a bug or bad data),
from the real PostgreSQL through the real asyncpg dialect."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from monitoring.outages import store_unreachable
from tests.conftest import PG_ADMIN_DSN, free_port

pytestmark = pytest.mark.postgres
URL = "postgresql+asyncpg://{user}@127.0.0.1:{port}/test"


async def _error_of(sql: str, *, user: str = "postgres", port: int = 5432) -> BaseException:
    engine = create_async_engine(URL.format(user=user, port=port))
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    except (SQLAlchemyError, OSError) as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


async def test_a_server_that_is_not_there_is_an_outage() -> None:
    assert store_unreachable(await _error_of("SELECT 1", port=free_port()))


async def test_a_connection_the_server_ended_is_an_outage() -> None:
    # What `pg_ctl stop -m fast` does to every backend.
    assert store_unreachable(await _error_of("SELECT pg_terminate_backend(pg_backend_pid())"))


async def test_no_connection_slot_left_is_an_outage_not_a_refusal() -> None:
    # SQLSTATE 53300 reaches the caller as a plain DBAPIError, as 57P03 ("the database system
    # is shutting down") does while a server stops.
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute("DROP ROLE IF EXISTS lg_no_slots")
        await admin.execute("CREATE ROLE lg_no_slots LOGIN CONNECTION LIMIT 0")
        exc = await _error_of("SELECT 1", user="lg_no_slots")
        assert getattr(getattr(exc, "orig", None), "sqlstate", None) == "53300"
        assert store_unreachable(exc)
    finally:
        await admin.execute("DROP ROLE IF EXISTS lg_no_slots")
        await admin.close()


@pytest.mark.parametrize(
    "sql", ["SELEC 1", "SELECT 1/0", "SELECT * FROM no_such_table", "SELECT 'x'::int"]
)
async def test_work_the_database_refuses_is_not_an_outage(sql: str) -> None:
    assert not store_unreachable(await _error_of(sql))
