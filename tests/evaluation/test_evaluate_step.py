"""The rollout's evaluate step through the gateway: a candidate worse than stable on the route's
pack is rolled back before a single live request reaches it; one as good goes on to shadow."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from rollout.control import RolloutControl
from service.auth import Role
from service.db.models import RequestRecord
from tests.adapters.test_placement import add_version
from tests.conftest import Harness, chat_body
from tests.evaluation import test_runs
from tests.evaluation.test_runs import ROUTE, ended, knows
from tests.fake_engine import FakeEngine
from tests.rollout.test_rollouts import quick_spec

gw = test_runs.gw  # the same gateway: route 'triage' on triage@1, the pack 'gold@1'


async def rollout(h: Harness) -> dict[str, Any]:
    r = await h.client.get(f"/v1/admin/rollouts/{ROUTE}", headers=h.auth(Role.SRE))
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def evaluated(h: Harness) -> dict[str, Any]:
    """Tick until the evaluation run started, wait for it to end, tick once more."""
    control: RolloutControl = h.app.state.rollouts
    await control.tick_all()
    started = await rollout(h)
    assert started["phase"] == "evaluating" and started["evaluation_run"], started
    await ended(h, started["evaluation_run"])
    await control.tick_all()
    return await rollout(h)


async def live(h: Harness, n: int) -> list[str]:
    """Send ``n`` requests to the route; the versions their records say answered them."""
    answers = await asyncio.gather(
        *(h.client.post("/v1/chat/completions", json=chat_body(ROUTE), headers=h.auth())
          for _ in range(n))
    )  # fmt: skip
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [str(r.target) for r in await h.records(n)]


async def test_a_worse_candidate_is_rolled_back_at_evaluate_with_no_live_request(
    gw: Harness, engine: FakeEngine
) -> None:
    spec = quick_spec()  # triage@2, which answers billing to everything
    r = await gw.client.post(f"/v1/admin/rollouts/{ROUTE}", json=spec, headers=gw.auth(Role.SRE))
    assert r.status_code == 200, r.text
    assert r.json()["phase"] == "pending"
    back = await evaluated(gw)
    assert back["phase"] == "rolled_back", back
    reason = back["events"][-1]["reason"]
    assert reason.startswith("evaluation failed, before any live request: ")
    assert "worse by more than 2 points" in reason and back["evaluation_run"] in reason
    targets = await live(gw, 6)
    assert targets and set(targets) == {"triage@1"}
    asked = sum(b["model"] == "triage@2" for b in engine.requests)
    assert asked == 12  # the pack's twelve cases, and nothing live
    async with gw.app.state.gateway.sessions() as session:
        shadow = await session.scalar(
            select(func.count()).select_from(RequestRecord).where(RequestRecord.arm != "stable")
        )
    assert shadow == 0


async def test_a_candidate_as_good_as_stable_goes_on_to_shadow(
    gw: Harness, engine: FakeEngine, tmp_path: Any
) -> None:
    await add_version(gw, "triage", 3, tmp_path)
    engine.writers["triage@3"] = knows
    spec = quick_spec("triage@3")
    r = await gw.client.post(f"/v1/admin/rollouts/{ROUTE}", json=spec, headers=gw.auth(Role.SRE))
    assert r.status_code == 200, r.text
    moved = await evaluated(gw)
    assert moved["phase"] == "shadow", moved
    assert moved["events"][-1]["reason"].startswith("evaluation passed (")
    run = await gw.client.get(
        f"/v1/admin/eval/runs/{moved['evaluation_run']}", headers=gw.auth(Role.SRE)
    )
    assert run.json()["started_by"] == "rollout" and run.json()["candidate"] == "triage@3"


async def test_a_named_pack_that_does_not_exist_is_refused_at_start(gw: Harness) -> None:
    spec = {**quick_spec(), "evaluation": {"pack": "gold@7"}}
    r = await gw.client.post(f"/v1/admin/rollouts/{ROUTE}", json=spec, headers=gw.auth(Role.SRE))
    assert r.status_code == 400 and "evaluation.pack" in r.json()["error"]["message"], r.text
    off = {**quick_spec(), "evaluation": {"enabled": False}}
    r = await gw.client.post(f"/v1/admin/rollouts/{ROUTE}", json=off, headers=gw.auth(Role.SRE))
    assert r.status_code == 200
    control: RolloutControl = gw.app.state.rollouts
    await control.tick_all()
    assert (await rollout(gw))["phase"] == "shadow"  # the step turned off: straight to shadow
