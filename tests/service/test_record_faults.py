"""No record of an answered request is lost: the real gateway process, killed or cut off from
its database mid-load, and counted afterwards (rows == answered).

The gateway runs as ``python -m service serve`` in front of the scriptable fake engine (served
from this test's loop), so what is measured is the gateway's own behaviour.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from service.auth import Role
from service.db.models import RequestRecord
from service.db.session import create_engine, session_factory
from tests.conftest import chat_body, fresh_database, insert_key, wait_until
from tests.db_proxy import CuttableProxy
from tests.fake_engine import FakeEngine
from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.heavy

CLIENTS = 8


class Load:
    """Clients sending chat requests until stopped; every answer's request id is kept."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.answered: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.failures = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = await client.post(
                        "/v1/chat/completions", json=chat_body(), headers=self.headers
                    )
                except httpx.HTTPError:
                    self.failures += 1  # no answer came back: nothing is owed a record
                    await asyncio.sleep(0.05)
                    continue
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                self.answered.add(r.headers["x-request-id"])

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(CLIENTS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _missing(database_url: str, ids: set[str]) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            found = set((await session.scalars(select(RequestRecord.id))).all())
    finally:
        await engine.dispose()
    return ids - found


async def _all_recorded(database_url: str, ids: set[str], timeout_s: float = 90.0) -> None:
    missing: set[str] = set()

    async def none_missing() -> bool:
        nonlocal missing
        missing = await _missing(database_url, ids)
        return not missing

    try:
        await wait_until(none_missing, timeout_s=timeout_s, what="every answered request's record")
    except AssertionError as exc:
        raise AssertionError(
            f"{len(missing)} of {len(ids)} answered requests have no record"
        ) from exc


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sigkill_mid_load_loses_no_record(
    kind: str, tmp_path: Path, engine: FakeEngine
) -> None:
    async with fresh_database(kind, tmp_path) as url:
        key = await insert_key(url, Role.APP)
        gateway = GatewayProcess(tmp_path / "data", url, engine.url)
        gateway.start()
        try:
            await gateway.ready()
            load = Load(gateway.url, key)
            load.start()
            await wait_until(lambda: len(load.answered) >= 300, timeout_s=120, what="300 answers")
            gateway.kill()
            await load.stop()
            answered = set(load.answered)
            gateway.start()  # same data directory: it ships what the killed one spooled
            await gateway.ready()
            await _all_recorded(url, answered)
        finally:
            gateway.stop()
    assert load.statuses.get(200, 0) == len(answered)


@pytest.mark.postgres
async def test_a_database_outage_mid_load_loses_no_record(
    tmp_path: Path, engine: FakeEngine
) -> None:
    async with fresh_database("postgres", tmp_path) as url:
        key = await insert_key(url, Role.APP)
        proxy = CuttableProxy()
        await proxy.start()
        through_proxy = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        gateway = GatewayProcess(tmp_path / "data", through_proxy, engine.url)
        gateway.start()
        try:
            await gateway.ready()
            load = Load(gateway.url, key)
            load.start()
            await wait_until(lambda: len(load.answered) >= 100, timeout_s=120, what="answers")
            await proxy.cut()
            before = len(load.answered)
            # The gateway keeps answering while the records wait in its spool.
            await wait_until(
                lambda: len(load.answered) >= before + 300, timeout_s=120,
                what="answers during the outage",
            )  # fmt: skip
            during = len(load.answered) - before
            await proxy.restore()
            await wait_until(
                lambda: len(load.answered) >= before + during + 100, timeout_s=120,
                what="answers after the outage",
            )  # fmt: skip
            await load.stop()
            await _all_recorded(url, set(load.answered))
        finally:
            gateway.stop()
            await proxy.cut()
    assert set(load.statuses) == {200}
