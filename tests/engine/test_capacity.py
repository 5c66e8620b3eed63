"""A pool that declares how many adapters a replica holds: versions placed by traffic, within it,
and requests sent only to replicas that hold their version (two fake replicas of one slot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.auth import Role
from service.cli.app import app as cli
from service.engine.managed import vllm_command
from service.settings import EnginePoolSettings, ManagedEngineSettings, Settings
from tests.adapters.test_placement import add_version, set_target
from tests.conftest import Harness, chat_body, make_settings, running_gateway, served
from tests.fake_engine import MODEL, FakeEngine

CHAT = "/v1/chat/completions"


@pytest.fixture
async def held(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine
) -> AsyncIterator[Harness]:
    pool = EnginePoolSettings(
        name="default", base_model=MODEL, urls=[engine.url, engine2.url], max_loras=1
    )
    settings = make_settings(
        sqlite_url, tmp_path, [], engines=[pool],
        adapter_reconcile_interval_s=3600, adapter_unload_grace_s=0,
        health_probe_interval_s=3600,  # an ejection holds until the test ends it
    )  # fmt: skip
    async with running_gateway(settings) as harness:
        yield harness


async def ask(harness: Harness, times: int) -> None:
    for _ in range(times):
        r = await harness.client.post(CHAT, json=chat_body(), headers=harness.auth())
        assert r.status_code == 200


async def test_versions_are_placed_by_traffic_within_each_replicas_capacity(
    held: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    reconcile = held.app.state.gateway.reconciler.reconcile
    for version in (1, 2):
        await add_version(held, "triage", version, tmp_path)
    assert (await set_target(held, "triage@1"))["status"] == 200
    # Placed on one replica before the switch: one is enough to serve it.
    first, other = (engine, engine2) if engine.adapters else (engine2, engine)
    assert (set(first.adapters), set(other.adapters)) == ({"triage@1"}, set())
    await reconcile()  # no traffic yet: it stays on one replica
    assert not other.adapters
    await ask(held, 3)
    assert [b["model"] for b in first.requests[-3:]] == ["triage@1"] * 3
    await reconcile()  # the only version with traffic is the hottest: every replica
    assert set(engine.adapters) == set(engine2.adapters) == {"triage@1"}

    assert (await set_target(held, "triage@2"))["status"] == 200
    await reconcile()
    # Each replica holds one version: the new one, and the old one kept warm where it fits.
    held_now = [set(e.adapters) for e in (engine, engine2)]
    assert sorted(held_now, key=sorted) == [{"triage@1"}, {"triage@2"}]
    before = len(engine.requests) + len(engine2.requests)
    await ask(held, 4)
    models = [b["model"] for b in (engine.requests + engine2.requests)]
    assert len(models) == before + 4 and models.count("triage@2") == 4
    holder = engine if "triage@2" in engine.adapters else engine2
    assert [b["model"] for b in holder.requests[-4:]] == ["triage@2"] * 4


def test_the_managed_engine_declares_its_capacity_only_when_its_host_cache_is_set(
    tmp_path: Path,
) -> None:
    managed = ManagedEngineSettings(max_loras=2)
    assert "--max-cpu-loras" not in vllm_command(managed, tmp_path)
    settings = Settings(_env_file=None, data_dir=tmp_path, managed_engine=managed)  # type: ignore[call-arg]
    assert settings.engine_pools()[0].capacity is None
    managed = ManagedEngineSettings(max_loras=2, max_cpu_loras=8)
    command = vllm_command(managed, tmp_path)
    assert command[command.index("--max-cpu-loras") + 1] == "8"
    settings = Settings(_env_file=None, data_dir=tmp_path, managed_engine=managed)  # type: ignore[call-arg]
    (pool,) = settings.engine_pools()
    assert (pool.max_loras, pool.capacity) == (2, 8)


async def test_placement_is_shown_by_the_api_the_cli_and_the_metrics(
    held: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(held, "triage", 1, tmp_path)
    assert (await set_target(held, "triage@1"))["status"] == 200
    await held.app.state.gateway.reconciler.reconcile()
    holder = engine.url if engine.adapters else engine2.url
    r = await held.client.get("/v1/admin/engine/placement", headers=held.auth(Role.SRE))
    assert r.status_code == 200
    (pool,) = r.json()["data"]
    assert (pool["name"], pool["max_loras"], pool["capacity"]) == ("default", 1, 1)
    shown = {replica["url"]: replica["held"] for replica in pool["replicas"]}
    assert shown == {engine.url: [], engine2.url: [], holder: ["triage@1"]}
    refused = await held.client.get("/v1/admin/engine/placement", headers=held.auth(Role.APP))
    assert refused.status_code == 403
    async with served(held.app) as url:
        printed = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["engine", "placement", "--key", held.keys[Role.SRE], "--url", url],
        )
    assert printed.exit_code == 0, printed.output
    assert "pool default (fake-base): holds 1, slots 1" in printed.output
    line = next(x for x in printed.output.splitlines() if holder in x)
    assert line.split()[-3:] == ["1", "triage@1", "-"]
    metrics = (await held.client.get("/metrics", headers=held.auth(Role.ADMIN))).text
    assert f'loragate_engine_replica_versions_held{{pool="default",replica="{holder}"}} 1.0' in (
        metrics
    )


async def test_a_spare_copy_goes_only_once_no_request_runs_on_it(
    held: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    path = await add_version(held, "triage", 1, tmp_path)
    assert (await set_target(held, "triage@1"))["status"] == 200
    for fake in (engine, engine2):  # a copy on each replica, where one is all it asks for
        fake.adapters["triage@1"] = path
    gateway = held.app.state.gateway
    pool = gateway.engines.pool("default")
    # A request running on each copy (without the traffic that would ask for both copies).
    for replica in pool.replicas:
        replica.running["triage@1"] += 1
    await gateway.reconciler.reconcile()
    assert "triage@1" in engine.adapters and "triage@1" in engine2.adapters
    for replica in pool.replicas:
        replica.running.clear()
    await gateway.reconciler.reconcile()
    assert ["triage@1" in fake.adapters for fake in (engine, engine2)].count(True) == 1


async def test_a_version_whose_only_replica_is_ejected_is_placed_on_another(
    held: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(held, "triage", 1, tmp_path)
    assert (await set_target(held, "triage@1"))["status"] == 200
    gateway = held.app.state.gateway
    pool = gateway.engines.pool("default")
    (holder,) = [r for r in pool.replicas if "triage@1" in r.loaded]
    pool.eject(holder, "HTTP 500")
    await gateway.reconciler.reconcile()
    assert "triage@1" in engine.adapters and "triage@1" in engine2.adapters
    other = next(fake for fake in (engine, engine2) if fake.url != holder.url)
    await ask(held, 2)
    assert [b["model"] for b in other.requests[-2:]] == ["triage@1"] * 2
