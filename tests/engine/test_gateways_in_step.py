"""Several gateway processes on one PostgreSQL database stay in step: a route switch and a key
revocation reach every gateway at once (NOTIFY), long before the periodic refresh, and no
gateway unloads a version while another still serves a request on it.

Three real ``python -m service serve`` processes share one fake engine (served from this test's
loop). Their periodic refresh is a minute, so only a notification explains a change seen in
seconds; the deadlines are generous for a loaded machine and the times are printed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.auth import Role
from service.db.models import AdapterVersion
from service.db.session import create_engine, session_factory
from service.keys import store as key_store
from service.routes.config import DEFAULT_ROUTES, sync_routes
from service.settings import EnginePoolSettings
from tests.conftest import chat_body, fresh_database, insert_key, wait_until
from tests.fake_engine import MODEL, Behaviour, FakeEngine
from tests.gateway_process import GatewayProcess

pytestmark = [pytest.mark.postgres, pytest.mark.heavy]

REFRESH_S = 60.0  # the fallback refresh: nothing in these tests may wait for it
SEEN_WITHIN_S = 30.0  # generous on a loaded machine, and still well inside REFRESH_S
GATEWAYS = 3


@dataclass
class Fleet:
    url: str
    gateways: list[GatewayProcess]
    app_key: str
    sre_key: str

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def chat(self, gateway: GatewayProcess, **extra: Any) -> httpx.Response:
        # Held at the engine while the fleet switches and drains: minutes on a loaded machine.
        async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as client:
            return await client.post(
                "/v1/chat/completions", json=chat_body(**extra), headers=self.auth(self.app_key)
            )

    async def switch(self, gateway: GatewayProcess, target: str) -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            r = await client.put(
                "/v1/admin/routes/chat/target",
                json={"target": target},
                headers=self.auth(self.sre_key),
            )
        assert r.status_code == 200, r.text


async def _prepare(url: str, tmp_path: Path) -> None:
    """The route and two registered versions, before any gateway starts."""
    engine = create_engine(url)
    try:
        async with session_factory(engine).begin() as session:
            pools = [EnginePoolSettings(name="default", base_model=MODEL, urls=["http://x"])]
            await sync_routes(session, DEFAULT_ROUTES, pools)
            for version in (1, 2):
                store = tmp_path / f"triage-{version}"
                store.mkdir()
                session.add(
                    AdapterVersion(
                        id=f"triage@{version}", name="triage", version=version,
                        sha256=f"{version:064d}", pool="default", base_model=MODEL, rank=8,
                        alpha=16.0, target_modules=["q_proj"], size_bytes=1,
                        store_path=str(store), created_at=datetime.now(UTC), changelog="",
                    )
                )  # fmt: skip
    finally:
        await engine.dispose()


@pytest.fixture
async def fleet(tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Fleet]:
    async with fresh_database("postgres", tmp_path) as url:
        await _prepare(url, tmp_path)
        app_key = await insert_key(url, Role.APP)
        sre_key = await insert_key(url, Role.SRE)
        env = {
            "LORAGATE_SNAPSHOT_REFRESH_S": str(REFRESH_S),
            "LORAGATE_ADAPTER_RECONCILE_INTERVAL_S": "0.2",
            "LORAGATE_ADAPTER_UNLOAD_GRACE_S": "0.5",
            "LORAGATE_PEER_HEARTBEAT_S": "0.5",
            "LORAGATE_PEER_STALE_AFTER_S": "20",
            "LORAGATE_ROLLOUT_TICK_S": "3600",
            "LORAGATE_LOG_LEVEL": "INFO",
        }
        gateways = [
            GatewayProcess(tmp_path / f"gw{i}", url, engine.url, **env) for i in range(GATEWAYS)
        ]
        for gateway in gateways:
            gateway.start()
        try:
            await asyncio.gather(*(gateway.ready() for gateway in gateways))
            yield Fleet(url, gateways, app_key, sre_key)
        finally:
            for gateway in gateways:
                gateway.stop()


async def _serves(fleet: Fleet, gateway: GatewayProcess, target: str) -> bool:
    r = await fleet.chat(gateway)
    return r.status_code == 200 and r.json()["model"] == target


async def _seen_by_all(fleet: Fleet, check: Any, what: str) -> list[float]:
    """Seconds until each gateway passes ``check``, polled side by side."""
    start = time.monotonic()

    async def one(gateway: GatewayProcess) -> float:
        await wait_until(
            lambda: check(gateway), timeout_s=SEEN_WITHIN_S, what=f"{what} on {gateway.url}"
        )
        return time.monotonic() - start

    return list(await asyncio.gather(*(one(g) for g in fleet.gateways)))


async def test_a_route_switch_reaches_every_gateway_at_once(
    fleet: Fleet, engine: FakeEngine
) -> None:
    first, *others = fleet.gateways
    for gateway in fleet.gateways:
        assert await _serves(fleet, gateway, MODEL)
    await fleet.switch(first, "triage@1")
    seen = await _seen_by_all(fleet, lambda g: _serves(fleet, g, "triage@1"), "triage@1")
    print(f"\nswitch to triage@1 seen after {', '.join(f'{s:.3f}' for s in seen)} s")
    await fleet.switch(others[0], "triage@2")
    seen = await _seen_by_all(fleet, lambda g: _serves(fleet, g, "triage@2"), "triage@2")
    print(f"switch to triage@2 seen after {', '.join(f'{s:.3f}' for s in seen)} s")
    assert max(seen) < REFRESH_S


async def test_a_revoked_key_is_refused_by_every_gateway_at_once(fleet: Fleet) -> None:
    for gateway in fleet.gateways:
        assert (await fleet.chat(gateway)).status_code == 200
    key_id = fleet.app_key.split("-")[1]
    engine = create_engine(fleet.url)
    try:
        async with session_factory(engine).begin() as session:
            assert await key_store.revoke_key(session, key_id, datetime.now(UTC))
    finally:
        await engine.dispose()

    async def refused(gateway: GatewayProcess) -> bool:
        return (await fleet.chat(gateway)).status_code == 401

    seen = await _seen_by_all(fleet, refused, "the revoked key refused")
    print(f"\nrevoked key refused after {', '.join(f'{s:.3f}' for s in seen)} s")
    assert max(seen) < REFRESH_S


async def test_no_gateway_unloads_a_version_another_still_serves_a_request_on(
    fleet: Fleet, engine: FakeEngine
) -> None:
    a, b, _ = fleet.gateways
    await fleet.switch(a, "triage@1")
    await _seen_by_all(fleet, lambda g: _serves(fleet, g, "triage@1"), "triage@1")
    release = asyncio.Event()
    engine.by_model["triage@1"] = Behaviour(hold=release)
    held = asyncio.create_task(fleet.chat(b))
    await wait_until(
        lambda: engine.requests and engine.requests[-1]["model"] == "triage@1",
        timeout_s=SEEN_WITHIN_S,
        what="the held request at the engine",
    )
    await fleet.switch(a, "triage@2")
    await _seen_by_all(fleet, lambda g: _serves(fleet, g, "triage@2"), "triage@2")
    # Every gateway now finds triage@1 unwanted; its grace (0.5 s) passes many times over while
    # gateway b still has the request on it, and the version stays.
    await asyncio.sleep(5)
    assert "triage@1" in engine.adapters
    assert ("unload", "triage@1") not in engine.adapter_calls
    release.set()
    answer = await held
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "triage@1"
    # Drained everywhere, it goes.
    await wait_until(
        lambda: "triage@1" not in engine.adapters, timeout_s=SEEN_WITHIN_S, what="the unload"
    )
