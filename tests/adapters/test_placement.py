"""Adapter versions on engines: placement plan, switching a route, reconcile after a restart.

Against two fake replicas that implement vLLM's runtime LoRA endpoints; the real-engine tier
does the same with vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.placement import Action, Change, UnwantedSince, plan
from service.auth import Role
from service.cli.app import app as cli
from service.db.models import AdapterVersion, Route
from service.routes.config import RoutesConfigError, RouteSpec, sync_routes
from tests.conftest import Harness, chat_body, make_settings, running_gateway, served, wait_until
from tests.fake_engine import MODEL, FakeEngine

CHAT = "/v1/chat/completions"


def test_plan_loads_what_is_missing_before_unloading() -> None:
    loaded = {"r1": {"a@1", "old@1"}, "r2": set[str]()}
    actions = plan({"a@1", "b@1"}, loaded, may_unload=lambda v: True)
    assert actions == [
        Action(Change.LOAD, "r1", "b@1"),
        Action(Change.LOAD, "r2", "a@1"),
        Action(Change.LOAD, "r2", "b@1"),
        Action(Change.UNLOAD, "r1", "old@1"),
    ]
    assert plan({"a@1"}, {"r1": {"a@1", "old@1"}}, may_unload=lambda v: False) == []


def test_unwanted_since_counts_from_when_a_version_stopped_being_wanted() -> None:
    since = UnwantedSince()
    since.update(wanted={"a@1"}, present={"a@1", "b@1"}, now=10.0)
    assert since.unwanted_for("b@1", now=25.0) == 15.0
    assert since.unwanted_for("a@1", now=25.0) == 0.0
    since.update(wanted={"a@1", "b@1"}, present={"a@1", "b@1"}, now=30.0)
    assert since.unwanted_for("b@1", now=40.0) == 0.0


async def add_version(harness: Harness, name: str, version: int, tmp_path: Path) -> str:
    store = tmp_path / f"{name}-{version}"
    store.mkdir()
    async with harness.app.state.gateway.sessions.begin() as session:
        session.add(
            AdapterVersion(
                id=f"{name}@{version}", name=name, version=version, sha256=f"{version:064d}",
                pool="default", base_model=MODEL, rank=8, alpha=16.0,
                target_modules=["q_proj"], size_bytes=1, store_path=str(store),
                created_at=datetime.now(UTC), changelog="",
            )
        )  # fmt: skip
    await harness.app.state.gateway.snapshot.reload()
    return str(store)


async def set_target(harness: Harness, target: str, role: Role = Role.SRE) -> dict[str, object]:
    r = await harness.client.put(
        "/v1/admin/routes/chat/target", json={"target": target}, headers=harness.auth(role)
    )
    return {"status": r.status_code, **r.json()} if r.content else {"status": r.status_code}


@pytest.fixture
async def two(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, engine2: FakeEngine
) -> AsyncIterator[Harness]:
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url, engine2.url],
        adapter_reconcile_interval_s=0.1, adapter_unload_grace_s=0.5,
    )  # fmt: skip
    async with running_gateway(settings) as harness:
        yield harness


async def test_switching_a_route_places_the_version_on_every_replica_first(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    path = await add_version(two, "triage", 1, tmp_path)
    answer = await set_target(two, "triage@1")
    assert (answer["status"], answer["target"]) == (200, "triage@1")
    assert str(answer["updated_at"]).endswith(("Z", "+00:00"))  # aware, on SQLite too
    assert engine.adapters == engine2.adapters == {"triage@1": path}
    r = await two.client.post(CHAT, json=chat_body(), headers=two.auth())
    assert r.status_code == 200
    assert (engine.requests + engine2.requests)[-1]["model"] == "triage@1"
    rows = await two.records(1)
    assert rows[-1].target == "triage@1"
    # Idempotent: the same switch again changes nothing and loads nothing twice.
    loads = len(engine.adapter_calls)
    assert (await set_target(two, "triage@1"))["status"] == 200
    assert len(engine.adapter_calls) == loads


async def test_switch_under_load_fails_no_request_and_old_version_is_unloaded(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    await add_version(two, "triage", 2, tmp_path)
    assert (await set_target(two, "triage@1"))["status"] == 200
    statuses: list[int] = []
    switched = asyncio.Event()

    async def client() -> None:
        # Until the switch is done, and a few after it: both versions must have served.
        after = 0
        while after < 3:
            after += switched.is_set()
            r = await two.client.post(CHAT, json=chat_body(), headers=two.auth())
            statuses.append(r.status_code)
            await asyncio.sleep(0.01)

    async def switch() -> None:
        await asyncio.sleep(0.05)
        assert (await set_target(two, "triage@2"))["status"] == 200
        switched.set()

    await asyncio.gather(*(client() for _ in range(6)), switch())
    assert switched.is_set() and set(statuses) == {200}
    models = [b["model"] for b in engine.requests + engine2.requests]
    assert {"triage@1", "triage@2"} <= set(models)
    await wait_until(
        lambda: "triage@1" not in engine.adapters and "triage@1" not in engine2.adapters,
        what="the old version to be unloaded",
    )
    assert engine.adapters.keys() == engine2.adapters.keys() == {"triage@2"}


async def test_a_restarted_replica_gets_its_adapters_back(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    assert (await set_target(two, "triage@1"))["status"] == 200
    engine2.restart()
    assert engine2.adapters == {}
    await wait_until(lambda: "triage@1" in engine2.adapters, what="the reconcile loop to reload")
    # Meanwhile no request was sent to a replica without the version.
    for _ in range(6):
        r = await two.client.post(CHAT, json=chat_body(), headers=two.auth())
        assert r.status_code == 200


async def test_a_version_one_replica_refuses_is_unloaded_from_every_replica(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "big", 1, tmp_path)
    engine2.refuse.add("big@1")
    answer = await set_target(two, "big@1")
    assert answer["status"] == 502
    assert answer["error"]["code"] == "adapter_placement_failed"  # type: ignore[index]
    # The first replica had loaded and checked it; the refusal on the second unloads it there.
    assert ("load", "big@1") in engine.adapter_calls and engine.adapter_probes >= 1
    assert engine.adapters == engine2.adapters == {}
    r = await two.client.get("/v1/admin/routes", headers=two.auth(Role.SRE))
    assert [route["target"] for route in r.json()] == [MODEL]
    # Once the replica accepts it, the same switch goes through on both.
    engine2.refuse.clear()
    assert (await set_target(two, "big@1"))["status"] == 200
    assert engine.adapters.keys() == engine2.adapters.keys() == {"big@1"}


async def test_a_refused_switch_leaves_the_serving_version_loaded(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    assert (await set_target(two, "triage@1"))["status"] == 200
    await add_version(two, "big", 1, tmp_path)
    engine2.refuse.add("big@1")
    assert (await set_target(two, "big@1"))["status"] == 502
    assert engine.adapters.keys() == engine2.adapters.keys() == {"triage@1"}
    r = await two.client.post(CHAT, json=chat_body(), headers=two.auth())
    assert r.status_code == 200 and (await two.records(1))[-1].target == "triage@1"


async def test_admin_route_api_checks_roles_and_targets(two: Harness, tmp_path: Path) -> None:
    await add_version(two, "triage", 1, tmp_path)
    assert (await set_target(two, "triage@1", role=Role.APP))["status"] == 403
    assert (await set_target(two, "triage@1", role=Role.REVIEWER))["status"] == 403
    missing = await set_target(two, "triage@9")
    assert missing["status"] == 404
    assert missing["error"]["code"] == "adapter_not_found"  # type: ignore[index]
    r = await two.client.put(
        "/v1/admin/routes/nope/target", json={"target": "base"}, headers=two.auth(Role.SRE)
    )
    assert r.status_code == 404
    assert (await set_target(two, "base", role=Role.ADMIN))["target"] == MODEL


async def test_a_client_cannot_call_a_version_by_name(two: Harness, tmp_path: Path) -> None:
    await add_version(two, "triage", 1, tmp_path)
    assert (await set_target(two, "triage@1"))["status"] == 200
    r = await two.client.post(CHAT, json=chat_body("triage@1"), headers=two.auth())
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    rows = {row.id: row for row in await two.records(1)}
    assert rows[r.headers["x-request-id"]].status_code == 404


async def test_routes_file_without_target_keeps_the_switched_version(
    two: Harness, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    assert (await set_target(two, "triage@1"))["status"] == 200
    gw = two.app.state.gateway
    pools = gw.settings.engine_pools()
    async with gw.sessions.begin() as session:
        await sync_routes(session, [RouteSpec(name="chat", max_tokens_cap=64)], pools)
        await sync_routes(session, [RouteSpec(name="pinned", target="triage@1")], pools)
    async with gw.sessions() as session:
        chat, pinned = await session.get(Route, "chat"), await session.get(Route, "pinned")
    assert chat is not None and (chat.target, chat.max_tokens_cap) == ("triage@1", 64)
    assert pinned is not None and pinned.target == "triage@1"
    with pytest.raises(RoutesConfigError, match="no adapter version 'triage@7'"):
        async with gw.sessions.begin() as session:
            await sync_routes(session, [RouteSpec(name="chat", target="triage@7")], pools)


async def test_version_listing_shows_where_each_version_is_loaded(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    await add_version(two, "triage", 2, tmp_path)
    assert (await set_target(two, "triage@2"))["status"] == 200
    r = await two.client.get("/v1/admin/adapters", headers=two.auth(Role.SRE))
    loaded = {v["id"]: sorted(v["loaded_on"]) for v in r.json()["data"]}
    assert loaded == {"triage@1": [], "triage@2": sorted([engine.url, engine2.url])}
    one = await two.client.get("/v1/admin/adapters/triage@2", headers=two.auth(Role.SRE))
    assert sorted(one.json()["loaded_on"]) == sorted([engine.url, engine2.url])


async def test_cli_switches_a_route_and_lists_placements_through_the_gateway(
    two: Harness, engine: FakeEngine, engine2: FakeEngine, tmp_path: Path
) -> None:
    await add_version(two, "triage", 1, tmp_path)
    sre = two.keys[Role.SRE]
    runner = CliRunner()
    async with served(two.app) as url:
        switched = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["routes", "set-target", "chat", "triage@1", "--key", sre, "--url", url],
        )
        listed = await asyncio.to_thread(
            runner.invoke, cli, ["adapters", "list", "--key", sre, "--url", url]
        )
        refused = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["routes", "set-target", "chat", "triage@5", "--key", sre, "--url", url],
        )
    assert switched.exit_code == 0, switched.output
    assert "chat -> triage@1" in switched.output
    assert listed.exit_code == 0, listed.output
    line = next(x for x in listed.output.splitlines() if x.startswith("triage@1"))
    assert engine.url in line and engine2.url in line
    assert refused.exit_code == 1 and "HTTP 404" in refused.output
