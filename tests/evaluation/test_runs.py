"""Evaluation runs through the gateway against a fake engine whose versions answer from the
question: figures per arm, the paired comparison, the route's contract applied, the versions
kept loaded while the run lasts, bounded calls, and runs that lose their gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from adapters.dataset import example_data
from service.auth import Role
from service.cli.app import app as cli
from service.db.evaluation_models import EvalAnswer, EvalRun
from service.db.models import RequestRecord
from service.evaluation import runs
from service.evaluation.executor import RunExecutor
from tests.adapters.test_placement import add_version
from tests.conftest import Harness, make_settings, running_gateway, served, wait_until
from tests.fake_engine import Behaviour, FakeEngine

ROUTE = "triage"
CATEGORIES = ["billing", "technical", "account", "shipping"]


def ticket(category: str) -> str:
    return json.dumps({"category": category, "urgency": 2, "next_action": "Reply"})


def knows(body: dict[str, Any]) -> list[str]:
    """The good version: the category the question names ("... about <category>")."""
    question = body["messages"][-1]["content"]
    return [ticket(question.rsplit(" ", 1)[-1])]


def always_billing(_: dict[str, Any]) -> list[str]:
    return [ticket("billing")]


def pack_cases() -> list[dict[str, Any]]:
    """Twelve tickets, three per category; the judged field is the category."""
    return [
        {
            "messages": [{"role": "user", "content": f"ticket {i} about {category}"}],
            "expected": {"category": category},
            "kind": "hard" if i == 0 else "held_out",
            "slices": {"language": "de" if i % 2 else "en"},
        }
        for category in CATEGORIES
        for i in range(3)
    ]


@pytest.fixture
async def gw(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    """Route 'triage' (the tickets schema, escalate below 0.5) serving triage@1; triage@2
    registered, not loaded; a pack ``triage/gold@1``."""
    (tmp_path / "tickets.schema.json").write_text(example_data("tickets.schema.json").read_text())
    route = {
        "name": ROUTE,
        "output_schema": "tickets.schema.json",
        "review": {"escalate": "below", "threshold": 0.5},
    }
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump({"routes": [{"name": "chat"}, route]}))
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes, adapter_reconcile_interval_s=0.1,
        adapter_unload_grace_s=0.2, eval_heartbeat_s=0.2, rollout_tick_s=3600,
    )  # fmt: skip
    async with running_gateway(settings) as harness:
        await add_version(harness, "triage", 1, tmp_path)
        await add_version(harness, "triage", 2, tmp_path)
        r = await harness.client.put(
            f"/v1/admin/routes/{ROUTE}/target", json={"target": "triage@1"},
            headers=harness.auth(Role.SRE),
        )  # fmt: skip
        assert r.status_code == 200, r.text
        r = await harness.client.post(
            "/v1/admin/eval/packs", headers=harness.auth(Role.SRE),
            json={"route": ROUTE, "name": "gold", "cases": pack_cases()},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        engine.writers["triage@1"] = knows
        engine.writers["triage@2"] = always_billing
        yield harness


async def start(h: Harness, **body: Any) -> Any:
    body = {"route": ROUTE, "pack": "gold@1", "candidate": "triage@2", **body}
    return await h.client.post("/v1/admin/eval/runs", json=body, headers=h.auth(Role.SRE))


async def ended(h: Harness, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def over() -> bool:
        r = await h.client.get(f"/v1/admin/eval/runs/{run_id}", headers=h.auth(Role.SRE))
        assert r.status_code == 200, r.text
        found.update(r.json())
        return bool(found["status"] != "running")

    await wait_until(over, timeout_s=timeout_s, what=f"run {run_id} to end")
    return found


async def test_a_run_scores_the_candidate_against_stable_case_by_case(
    gw: Harness, engine: FakeEngine
) -> None:
    r = await start(gw)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running" and r.json()["baseline"] == "triage@1"
    run = await ended(gw, r.json()["id"])
    assert run["status"] == "done", run
    figures = run["figures"]
    candidate, stable = figures["arms"]["candidate"], figures["arms"]["baseline"]
    assert figures["cases"] == 12
    assert (candidate["passed"]["hits"], stable["passed"]["hits"]) == (3, 12)
    assert candidate["passed"]["low"] < 0.25 < candidate["passed"]["high"]
    category = candidate["fields"]["category"]
    assert category["confusion"]["technical"] == {"billing": 3}
    assert category["classes"]["billing"]["precision"] == 0.25
    assert category["classes"]["billing"]["recall"] == 1.0
    assert category["classes"]["technical"]["recall"] == 0.0
    assert stable["fields"]["category"]["classes"]["technical"]["f1"] == 1.0
    assert candidate["schema_valid"]["hits"] == 12 and candidate["escalated"]["hits"] == 0
    assert candidate["by_kind"]["hard"]["n"] == 4 and candidate["by_slice"]["language"]["de"]
    assert candidate["tokens"]["completion"] > 0 and candidate["failed_calls"] == 0
    # Nine cases only stable passed, none only the candidate: worse, paired.
    compared = figures["comparison"]["passed"]
    assert (compared["only_candidate"], compared["only_baseline"]) == (0, 9)
    assert compared["verdict"] == "worse" and compared["p_value"] < 0.01
    assert figures["comparison"]["fields"]["category"]["verdict"] == "worse"
    # The route's contract was applied, deterministically; nothing was recorded as traffic.
    asked = [b for b in engine.requests if b["model"] in {"triage@1", "triage@2"}]
    assert len(asked) == 24
    assert all(b["temperature"] == 0 and b["logprobs"] for b in asked)
    assert all(b["response_format"]["type"] == "json_schema" for b in asked)
    assert all("priority" not in b for b in asked)  # the pool does not schedule by priority
    async with gw.app.state.gateway.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(RequestRecord)) == 0
        stored = await session.scalar(
            select(func.count()).select_from(EvalAnswer).where(EvalAnswer.run_id == run["id"])
        )
    assert stored == 24
    listed = await gw.client.get(f"/v1/admin/eval/runs?route={ROUTE}", headers=gw.auth(Role.SRE))
    assert [x["id"] for x in listed.json()["data"]] == [run["id"]]


async def test_on_a_pool_that_schedules_by_priority_evaluation_asks_after_live_traffic(
    gw: Harness, engine: FakeEngine
) -> None:
    (pool,) = gw.app.state.gateway.settings.engine_pools()
    pool.priority_scheduling = True  # as the managed engine's pool declares
    run = await ended(gw, (await start(gw)).json()["id"])
    assert run["status"] == "done", run
    live = await gw.client.post(
        "/v1/chat/completions", headers=gw.auth(Role.APP),
        json={"model": ROUTE, "messages": [{"role": "user", "content": "my invoice is wrong"}]},
    )  # fmt: skip
    assert live.status_code == 200, live.text
    asked = [b for b in engine.requests if b["model"] in {"triage@1", "triage@2"}]
    cases = {c["messages"][-1]["content"] for c in pack_cases()}
    evaluated = [b for b in asked if b["messages"][-1]["content"] in cases]
    assert len(evaluated) == 24 and {b.get("priority") for b in evaluated} == {1}
    served = asked[-1]
    assert served["messages"][-1]["content"] == "my invoice is wrong"
    assert "priority" not in served  # live traffic: vLLM's default, 0, served first
    refused = await gw.client.post(
        "/v1/chat/completions", headers=gw.auth(Role.APP),
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "priority": -5},
    )  # fmt: skip
    assert refused.status_code == 400, refused.text  # no client jumps the queue


async def test_the_base_model_as_baseline_and_no_baseline(gw: Harness, engine: FakeEngine) -> None:
    engine.default = Behaviour(tokens=["I think it is about billing."])
    run = await ended(gw, (await start(gw, baseline="base")).json()["id"])
    assert run["baseline"] == "fake-base" and run["status"] == "done"
    base = run["figures"]["arms"]["baseline"]
    assert base["schema_valid"]["hits"] == 0 and base["escalated"]["hits"] == 12
    assert run["figures"]["comparison"]["passed"]["verdict"] == "no detectable difference"
    alone = await ended(gw, (await start(gw, baseline=None)).json()["id"])
    assert set(alone["figures"]["arms"]) == {"candidate"} and alone["figures"]["comparison"] is None


async def test_the_candidate_is_loaded_for_the_run_and_held_while_it_lasts(
    gw: Harness, engine: FakeEngine
) -> None:
    snapshot = gw.app.state.gateway.snapshot
    assert "triage@2" not in engine.adapters
    release = asyncio.Event()
    engine.by_model["triage@2"] = Behaviour(hold=release)
    run_id = (await start(gw, concurrency=2)).json()["id"]
    await wait_until(lambda: "triage@2" in snapshot.current.wanted_adapters("default"))
    await wait_until(lambda: sum(b["model"] == "triage@2" for b in engine.requests) == 2)
    # Longer than the unload grace and several reconcile passes: still loaded, still held.
    for _ in range(3):
        await gw.app.state.gateway.reconciler.reconcile()
    assert "triage@2" in engine.adapters
    assert sum(b["model"] == "triage@2" for b in engine.requests) == 2  # its concurrency
    release.set()
    assert (await ended(gw, run_id))["status"] == "done"
    await wait_until(lambda: "triage@2" not in snapshot.current.wanted_adapters("default"))
    await wait_until(lambda: "triage@2" not in engine.adapters, what="the unload after the run")


async def test_bad_requests_get_clear_errors(gw: Harness) -> None:
    cases = {
        "eval_run_invalid": [
            {"pack": "gold@9"},
            {"candidate": "nobody@1"},
            {"candidate": "triage@1"},  # stable already, compared with stable
            {"baseline": "triage@2"},  # itself
            {"concurrency": 99},
        ],
    }
    for code, bodies in cases.items():
        for body in bodies:
            r = await start(gw, **body)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    r = await start(gw, candidate="triage@1", baseline="base")
    assert r.status_code == 202  # the stable version against the base model is fine
    missing = await gw.client.get("/v1/admin/eval/runs/run_nope", headers=gw.auth(Role.SRE))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "eval_run_not_found"
    app = await gw.client.post(
        "/v1/admin/eval/runs", json={"route": ROUTE, "pack": "gold@1", "candidate": "triage@2"},
        headers=gw.auth(Role.APP),
    )  # fmt: skip
    assert app.status_code == 403
    await ended(gw, r.json()["id"])


async def test_a_run_whose_gateway_stops_is_interrupted_and_lets_its_version_go(
    db_url: str, gw: Harness, engine: FakeEngine, tmp_path: Path
) -> None:
    engine.by_model["triage@2"] = Behaviour(hold=asyncio.Event())  # never answers
    run_id = (await start(gw)).json()["id"]
    executor: RunExecutor = gw.app.state.evaluations
    await wait_until(lambda: any(b["model"] == "triage@2" for b in engine.requests))
    await executor.close()  # what the gateway's shutdown does
    run = await ended(gw, run_id)
    assert run["status"] == "interrupted" and "stopped" in run["reason"]
    # A run whose gateway died without a word: its heartbeat stops, and this gateway's own
    # sweep (every eval_heartbeat_s) ends it once the beat is older than eval_stale_after_s.
    sessions = gw.app.state.gateway.sessions
    lost = await runs.start_run(
        sessions,
        runs.NewRun(ROUTE, "triage/gold@1", "default", "triage@2", None, None, 1, None),
        None,
    )
    assert await runs.sweep_stale(sessions, timedelta(seconds=60)) == 0  # it is fresh
    async with sessions.begin() as session:
        await session.execute(
            update(EvalRun)
            .where(EvalRun.id == lost.id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    swept = await ended(gw, lost.id)
    assert swept["status"] == "interrupted" and swept["figures"] is None
    assert not await runs.beat(sessions, lost.id)  # its late gateway cannot revive it
    assert not await runs.finish_run(sessions, lost.id, {}, {})


async def test_the_cli_runs_a_pack_through_the_gateway_and_reads_runs(
    gw: Harness, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    sre, runner = gw.keys[Role.SRE], CliRunner()
    async with served(gw.app) as url:
        ran = await asyncio.to_thread(
            runner.invoke, cli, ["eval", "run", ROUTE, "triage@2", "--key", sre, "--url", url]
        )
        missing = await asyncio.to_thread(
            runner.invoke, cli, ["eval", "run", ROUTE, "nobody@1", "--key", sre, "--url", url]
        )
    assert ran.exit_code == 0, ran.output
    lines = ran.output.splitlines()
    run_id = lines[0].split()[1].rstrip(":")
    assert lines[0].endswith("triage/gold@1, triage@2 vs triage@1")  # the newest pack, stable
    passed = next(line for line in lines if line.strip().startswith("passed"))
    assert "3/12 = 25 % [" in passed and "12/12 = 100 % [" in passed.split("]")[1], passed
    assert any("category=technical F1" in line and "0.00" in line for line in lines), ran.output
    assert "worse (0 cases only the candidate passed, 9 only the baseline" in ran.output
    assert missing.exit_code == 1 and "HTTP 400" in missing.output
    listed = await asyncio.to_thread(runner.invoke, cli, ["eval", "runs", "list", "--route", ROUTE])
    assert listed.exit_code == 0 and listed.output.startswith(run_id), listed.output
    shown = await asyncio.to_thread(runner.invoke, cli, ["eval", "runs", "show", run_id, "--json"])
    assert json.loads(shown.output)["figures"]["arms"]["candidate"]["passed"]["hits"] == 3
    unknown = await asyncio.to_thread(runner.invoke, cli, ["eval", "runs", "show", "run_nope"])
    assert unknown.exit_code == 1 and "no evaluation run" in unknown.output


async def test_a_gateway_runs_at_most_its_share_of_evaluations_at_once(
    gw: Harness, engine: FakeEngine
) -> None:
    release = asyncio.Event()
    engine.by_model["triage@2"] = Behaviour(hold=release)
    started = await asyncio.gather(*(start(gw, baseline=None) for _ in range(3)))
    codes = sorted(r.status_code for r in started)
    assert codes == [202, 202, 429], [r.text for r in started]  # eval_max_runs: 2
    refused = next(r for r in started if r.status_code == 429)
    assert refused.json()["error"]["code"] == "eval_runs_busy"
    release.set()
    for r in started:
        if r.status_code == 202:
            assert (await ended(gw, r.json()["id"]))["status"] == "done"
    executor: RunExecutor = gw.app.state.evaluations
    await wait_until(lambda: executor.running == 0, what="the runs' tasks to end")
    again = await start(gw, baseline=None)
    assert again.status_code == 202  # room again once they ended
    await ended(gw, again.json()["id"])
