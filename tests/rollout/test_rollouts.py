"""Rollouts through the gateway against fake engines: shadow copies, the sticky canary, gates
that promote or roll back, SRE commands and their conflicts, and the Argo analysis endpoint.

Ticks are driven by the test (the analysis loop's interval is an hour) on a clock the test moves.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from rollout.control import RolloutControl
from rollout.core.machine import Phase
from service.auth import Role
from service.db.models import RequestRecord, RolloutEvent, Route
from tests.adapters.test_placement import add_version
from tests.conftest import (
    Harness,
    chat_body,
    make_settings,
    running_gateway,
    served,
    wait_until,
)
from tests.fake_engine import Behaviour, FakeEngine

CHAT = "/v1/chat/completions"
GOOD = Behaviour(tokens=['{"category":', '"billing",', '"urgency":2}'])
WORSE = Behaviour(tokens=['{"category":', '"technical",', '"urgency":2}'])


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# Requests a quick spec's step needs for its gates to decide (see quick_spec).
ENOUGH = 24


def quick_spec(candidate: str = "triage@2", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "candidate": candidate,
        "steps": [
            {"kind": "shadow", "weight": 100, "min_duration_s": 10, "min_samples": 5},
            {"kind": "canary", "weight": 50, "min_duration_s": 10, "min_samples": 5},
        ],
        # Small samples decide only with a wide tolerance and a high alpha; the latency gate
        # needs about 100 requests before its p95 has an upper bound, so it is left out here.
        "gates": ["error_rate", "agreement"],
        "thresholds": {"max_error_rate_increase": 0.3},
        "alpha": 0.5,
        "failure_limit": 2,
        "inconclusive_limit": 3,
        "progress_deadline_s": 600,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gw(
    db_url: str, tmp_path: Path, engine: FakeEngine, clock: Clock
) -> AsyncIterator[Harness]:
    """A gateway whose route 'chat' serves triage@1, with triage@2 registered."""
    settings = make_settings(
        db_url, tmp_path, [engine.url], rollout_tick_s=3600, adapter_reconcile_interval_s=0.1,
        adapter_unload_grace_s=0.2,
    )  # fmt: skip
    async with running_gateway(settings, clock=clock) as harness:
        await add_version(harness, "triage", 1, tmp_path)
        await add_version(harness, "triage", 2, tmp_path)
        r = await harness.client.put(
            "/v1/admin/routes/chat/target",
            json={"target": "triage@1"},
            headers=harness.auth(Role.SRE),
        )
        assert r.status_code == 200, r.text
        engine.by_model["triage@1"] = GOOD
        yield harness


def control(h: Harness) -> RolloutControl:
    rollouts: RolloutControl = h.app.state.rollouts
    return rollouts


async def start(h: Harness, spec: dict[str, Any], route: str = "chat") -> Any:
    return await h.client.post(f"/v1/admin/rollouts/{route}", json=spec, headers=h.auth(Role.SRE))


async def act(h: Harness, action: str, reason: str = "", route: str = "chat") -> Any:
    body = {"reason": reason} if reason else None
    return await h.client.post(
        f"/v1/admin/rollouts/{route}/{action}", json=body, headers=h.auth(Role.SRE)
    )


async def status(h: Harness) -> dict[str, Any]:
    r = await h.client.get("/v1/admin/rollouts/chat", headers=h.auth(Role.SRE))
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def send(h: Harness, n: int, **extra: Any) -> list[Any]:
    return list(
        await asyncio.gather(
            *(h.client.post(CHAT, json=chat_body(**extra), headers=h.auth()) for _ in range(n))
        )
    )


async def records(h: Harness, arm: str | None = None) -> list[RequestRecord]:
    async with h.app.state.gateway.sessions() as session:
        query = select(RequestRecord).order_by(RequestRecord.created_at)
        if arm is not None:
            query = query.where(RequestRecord.arm == arm)
        return list((await session.scalars(query)).all())


async def flushed(h: Harness, arm: str, count: int) -> list[RequestRecord]:
    async def enough() -> bool:
        return len(await records(h, arm)) >= count

    await wait_until(enough, what=f"{count} {arm} records")
    return await records(h, arm)


async def tick(h: Harness, clock: Clock, seconds: float = 11) -> dict[str, Any]:
    clock.advance(seconds)
    await control(h).tick_all()
    return await status(h)


async def shadowed(h: Harness, clock: Clock, requests: int) -> None:
    """Start the quick rollout, enter its shadow step and serve ``requests`` requests there."""
    assert (await start(h, quick_spec())).status_code == 200
    await tick(h, clock, 0)
    if requests:
        await send(h, requests)
        await flushed(h, "shadow", requests)


async def route_target(h: Harness) -> str:
    async with h.app.state.gateway.sessions() as session:
        route = await session.get(Route, "chat")
        assert route is not None
        return route.target


# --- shadow ------------------------------------------------------------------------------


async def test_shadow_copies_requests_to_the_candidate_and_never_returns_its_answer(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = WORSE
    r = await start(gw, quick_spec())
    assert r.status_code == 200, r.text
    assert (r.json()["phase"], r.json()["stable"]) == ("pending", "triage@1")
    assert "triage@2" in engine.adapters  # placed and probed before any traffic
    assert (await tick(gw, clock, 0))["phase"] == "shadow"
    answers = await send(gw, 6)
    assert {a.status_code for a in answers} == {200}
    assert all("billing" in a.json()["choices"][0]["message"]["content"] for a in answers)
    shadows = await flushed(gw, "shadow", 6)
    primaries = {r.id: r for r in await records(gw, "stable")}
    for shadow in shadows:
        assert shadow.target == "triage@2" and shadow.key_id is None
        assert shadow.shadow_of in primaries
        assert primaries[shadow.shadow_of].target == "triage@1"
        assert shadow.agreement == {"category": False, "urgency": True}
        assert shadow.rollout_id == primaries[shadow.shadow_of].rollout_id is not None
    assert {a.headers["x-request-id"] for a in answers} == set(primaries)


async def test_a_streamed_primary_is_compared_with_its_non_streamed_shadow(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = GOOD
    await shadowed(gw, clock, 0)
    r = await gw.client.post(CHAT, json=chat_body(stream=True), headers=gw.auth())
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    (shadow,) = await flushed(gw, "shadow", 1)
    assert shadow.agreement == {"category": True, "urgency": True}
    copy = next(b for b in engine.requests if b["model"] == "triage@2")
    assert "stream" not in copy and "stream_options" not in copy


async def test_a_worse_candidate_is_rolled_back_in_shadow(
    gw: Harness, engine: FakeEngine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    engine.by_model["triage@2"] = WORSE
    await shadowed(gw, clock, ENOUGH)
    first = await tick(gw, clock)
    assert (first["phase"], first["failures"]) == ("shadow", 1)
    gates = {g["gate"]: g["verdict"] for g in first["last_verdicts"]}
    assert gates == {"error_rate": "pass", "agreement": "fail"}
    agreement = next(g for g in first["last_verdicts"] if g["gate"] == "agreement")
    assert agreement["interval"]["high"] < 0.8 <= agreement["limit"]
    assert agreement["samples"] == {"candidate": ENOUGH, "stable": 0}
    assert agreement["sentence"].endswith("below the 80.0 % floor")
    with caplog.at_level(logging.WARNING, logger="rollout.control"):
        second = await tick(gw, clock)
    assert second["phase"] == "rolled_back"
    assert any("rolled back" in m and "agreement" in m for m in caplog.messages)
    assert [e["kind"] for e in second["events"]] == [
        "created", "started", "analysis_failed", "rolled_back",
    ]  # fmt: skip
    assert await route_target(gw) == "triage@1"
    # All traffic is back on stable, and the candidate is unloaded once nobody wants it.
    await send(gw, 3)
    assert len(await flushed(gw, "stable", ENOUGH + 3)) == ENOUGH + 3
    assert len(await records(gw, "shadow")) == ENOUGH
    await wait_until(lambda: "triage@2" not in engine.adapters, what="the candidate to unload")
    metrics = await gw.metrics()
    assert 'loragate_rollout_transitions_total{kind="rolled_back",route="chat"} 1.0' in metrics
    assert 'loragate_rollout_phase{phase="rolled_back",route="chat"} 1.0' in metrics


async def test_a_good_candidate_is_promoted_without_anyone_acting(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = GOOD
    await shadowed(gw, clock, ENOUGH)
    moved = await tick(gw, clock)
    assert (moved["phase"], moved["step"], moved["canary_weight"]) == ("canary", 1, 50)
    # Sticky canary: each user keeps its arm; both arms get users.
    arms: dict[str, set[str]] = {}
    for user in (f"user-{i}" for i in range(40)):
        r = await gw.client.post(CHAT, json=chat_body(user=user), headers=gw.auth())
        assert r.status_code == 200
        r2 = await gw.client.post(CHAT, json=chat_body(user=user), headers=gw.auth())
        assert r2.status_code == 200
        arms[user] = {r.headers["x-request-id"], r2.headers["x-request-id"]}

    async def all_primaries() -> bool:
        return len(await records(gw)) - len(await records(gw, "shadow")) >= ENOUGH + 80

    await wait_until(all_primaries, what="every primary record")
    rows = {r.id: r for r in await records(gw, "canary")}
    all_rows = {r.id: r for r in await records(gw)}
    per_user = [{all_rows[i].arm for i in ids} for ids in arms.values()]
    assert all(len(a) == 1 for a in per_user)
    assert {"canary"} in per_user and {"stable"} in per_user
    assert all(row.target == "triage@2" for row in rows.values())
    done = await tick(gw, clock)
    assert done["phase"] == "promoted"
    assert await route_target(gw) == "triage@2"
    before = len(await records(gw, "stable"))
    await send(gw, 2)
    after = await flushed(gw, "stable", before + 2)
    assert [r.target for r in after[-2:]] == ["triage@2", "triage@2"]
    await wait_until(lambda: "triage@1" not in engine.adapters, what="the old version to unload")


async def test_shadow_calls_are_shed_at_the_cap_and_primaries_unaffected(
    db_url: str, tmp_path: Path, engine: FakeEngine, clock: Clock
) -> None:
    settings = make_settings(
        db_url, tmp_path, [engine.url], rollout_tick_s=3600, shadow_max_concurrency=1
    )
    async with running_gateway(settings, clock=clock) as h:
        await add_version(h, "triage", 1, tmp_path)
        await add_version(h, "triage", 2, tmp_path)
        engine.by_model["triage@2"] = Behaviour(delay_s=0.5)
        assert (await start(h, quick_spec(), route="chat")).status_code == 200
        await control(h).tick_all()
        answers = await send(h, 8)
        assert {a.status_code for a in answers} == {200}
        metrics = await h.metrics()
        assert 'loragate_shadow_calls_total{outcome="shed",route="chat"} 7.0' in metrics
        assert 'loragate_shadow_calls_total{outcome="started",route="chat"} 1.0' in metrics
        assert len(await flushed(h, "shadow", 1)) == 1


async def test_a_failing_candidate_counts_as_errors_and_never_fails_the_primary(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = Behaviour(kind="status", status=500)
    await shadowed(gw, clock, 0)
    answers = await send(gw, ENOUGH)
    assert {a.status_code for a in answers} == {200}
    shadows = await flushed(gw, "shadow", ENOUGH)
    assert {s.status_code for s in shadows} == {502}
    state = await tick(gw, clock)
    gates = {g["gate"]: g for g in state["last_verdicts"]}
    assert gates["error_rate"]["verdict"] == "fail"
    assert gates["error_rate"]["candidate"] == 1.0


# --- commands ----------------------------------------------------------------------------


async def test_commands_are_idempotent_and_409_where_the_phase_does_not_allow_them(
    gw: Harness, clock: Clock
) -> None:
    await shadowed(gw, clock, 0)
    paused = await act(gw, "pause", "looking at a dashboard")
    assert (paused.status_code, paused.json()["phase"]) == (200, "paused")
    again = await act(gw, "pause")
    assert (again.status_code, again.json()["version"]) == (200, paused.json()["version"])
    # Paused keeps the step's traffic: shadow copies continue.
    assert gw.app.state.gateway.snapshot.current.routes["chat"].split.shadow_percent == 100
    assert (await tick(gw, clock))["phase"] == "paused"  # analysis stops
    assert (await act(gw, "resume")).json()["phase"] == "shadow"
    aborted = await act(gw, "abort", "wrong data")
    assert (aborted.status_code, aborted.json()["phase"]) == (200, "aborted")
    assert gw.app.state.gateway.snapshot.current.routes["chat"].split is None
    assert (await act(gw, "abort")).status_code == 200
    refused = await act(gw, "promote")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "rollout_conflict"
    assert (await act(gw, "resume")).status_code == 409
    retried = await act(gw, "retry", "data fixed")
    assert (retried.status_code, retried.json()["phase"]) == (200, "pending")
    promoted = await act(gw, "promote", "hotfix")
    assert (promoted.status_code, promoted.json()["phase"]) == (200, "promoted")
    assert await route_target(gw) == "triage@2"
    assert (await act(gw, "abort")).status_code == 409
    events = (await status(gw))["events"]
    assert [(e["kind"], e["reason"]) for e in events if e["actor"] != "controller"][1:] == [
        ("paused", "looking at a dashboard"), ("resumed", "resume by test sre"),
        ("aborted", "wrong data"), ("retried", "data fixed"), ("promoted", "hotfix"),
    ]  # fmt: skip
    assert all("test sre" in e["actor"] for e in events if e["actor"] != "controller")
    # One audit event per command that changed the rollout; repeated and refused ones add none.
    page = (await gw.client.get("/v1/admin/audit", headers=gw.auth(Role.SRE))).json()
    page["data"] = [e for e in page["data"] if e["action"].startswith("rollout.")]
    assert [e["action"] for e in reversed(page["data"])] == [
        "rollout.start", "rollout.pause", "rollout.resume", "rollout.abort", "rollout.retry",
        "rollout.promote",
    ]  # fmt: skip
    assert page["data"][0]["before"]["phase"] == "pending"
    assert page["data"][0]["after"]["phase"] == "promoted"


async def test_concurrent_promote_and_abort_exactly_one_wins(gw: Harness, clock: Clock) -> None:
    await shadowed(gw, clock, 0)
    promote, abort = await asyncio.gather(act(gw, "promote"), act(gw, "abort"))
    codes = sorted([promote.status_code, abort.status_code])
    assert codes == [200, 409]
    final = await status(gw)
    winner = "promoted" if promote.status_code == 200 else "aborted"
    assert final["phase"] == winner
    assert [e["kind"] for e in final["events"]].count(winner.rstrip("d").rstrip("e") + "ed") <= 1
    kinds = [e["kind"] for e in final["events"]]
    assert kinds.count("promoted") + kinds.count("aborted") == 1
    assert (await route_target(gw)) == ("triage@2" if winner == "promoted" else "triage@1")


async def test_starting_again_is_idempotent_and_a_different_candidate_conflicts(
    gw: Harness, tmp_path: Path
) -> None:
    first = await start(gw, quick_spec())
    again = await start(gw, quick_spec())
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    await add_version(gw, "triage", 3, tmp_path)
    other = await start(gw, quick_spec("triage@3"))
    assert other.status_code == 409
    switch = await gw.client.put(
        "/v1/admin/routes/chat/target", json={"target": "triage@3"}, headers=gw.auth(Role.SRE)
    )
    assert switch.status_code == 409


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"steps": [{"kind": "canary", "weight": 0}]}, "steps.0.weight"),
        ({"steps": [{"kind": "canary", "weight": 50}, {"kind": "canary", "weight": 5}]},
         "must not decrease"),
        ({"gates": ["error_rate", "nonsense"]}, "gates.1"),
        ({"color": "blue"}, "color"),
        ({"failure_limit": 0}, "failure_limit"),
    ],
)  # fmt: skip
async def test_invalid_specs_are_refused_with_a_clear_400(
    gw: Harness, spec: dict[str, Any], fragment: str
) -> None:
    r = await start(gw, {"candidate": "triage@2", **spec})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_rollout_spec" and fragment in error["message"]


async def test_unknown_candidates_and_the_stable_target_are_refused(gw: Harness) -> None:
    assert (await start(gw, quick_spec("triage@9"))).status_code == 404
    assert (await start(gw, quick_spec("triage@1"))).status_code == 400
    assert (await start(gw, quick_spec(), route="nope")).status_code == 404
    assert (await act(gw, "pause")).status_code == 404  # no rollout yet
    app_key = await gw.client.post("/v1/admin/rollouts/chat", json=quick_spec(), headers=gw.auth())
    assert app_key.status_code == 403


async def test_clients_cannot_pick_an_arm_or_name_the_candidate(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    await shadowed(gw, clock, 0)
    direct = await gw.client.post(CHAT, json=chat_body("triage@2"), headers=gw.auth())
    assert direct.status_code == 404
    headers = {**gw.auth(), "x-loragate-arm": "canary", "x-loragate-target": "triage@2"}
    r = await gw.client.post(CHAT, json=chat_body(), headers=headers)
    assert r.status_code == 200
    assert engine.requests[-1]["model"] == "triage@1" or engine.requests[-2]["model"] == "triage@1"


# --- persistence -------------------------------------------------------------------------


async def test_a_crash_between_applying_and_recording_a_step_repeats_nothing(
    gw: Harness, engine: FakeEngine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.by_model["triage@2"] = GOOD
    await shadowed(gw, clock, ENOUGH)
    from rollout import store as rollout_store

    real_save = rollout_store.save
    calls = 0

    async def crash_after_update(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        await real_save(*args, **kwargs)  # the step is applied in the transaction...
        raise ConnectionError("the process died before the transaction committed")

    monkeypatch.setattr(rollout_store, "save", crash_after_update)
    clock.advance(11)
    with pytest.raises(ConnectionError):
        await control(gw).tick_all()
    assert calls == 1
    unchanged = await status(gw)
    assert (unchanged["phase"], unchanged["step"]) == ("shadow", 0)
    monkeypatch.setattr(rollout_store, "save", real_save)
    resumed = await tick(gw, clock, 0)
    assert (resumed["phase"], resumed["step"]) == ("canary", 1)
    kinds = [e["kind"] for e in resumed["events"]]
    assert kinds.count("step_advanced") == 1
    async with gw.app.state.gateway.sessions() as session:
        versions = (await session.scalars(select(RolloutEvent.version))).all()
    assert len(versions) == len(set(versions))


async def test_two_replicas_ticking_one_rollout_advance_it_once(
    db_url: str, tmp_path: Path, engine: FakeEngine, clock: Clock
) -> None:
    settings = make_settings(db_url, tmp_path, [engine.url], rollout_tick_s=3600)
    engine.default = engine.by_model["triage@2"] = GOOD  # stable is the base model here
    async with (
        running_gateway(settings, clock=clock) as one,
        # Its own spool: each gateway keeps its records in a directory of its own.
        running_gateway(
            settings.model_copy(update={"spool_dir": tmp_path / "two"}), clock=clock
        ) as two,
    ):
        await add_version(one, "triage", 1, tmp_path)
        await add_version(one, "triage", 2, tmp_path)
        assert (await start(one, quick_spec())).status_code == 200
        await asyncio.gather(control(one).tick_all(), control(two).tick_all())
        await one.app.state.gateway.snapshot.reload()
        await send(one, ENOUGH)
        await flushed(one, "shadow", ENOUGH)
        clock.advance(11)
        await asyncio.gather(control(one).tick_all(), control(two).tick_all())
        final = await status(one)
        kinds = [e["kind"] for e in final["events"]]
        assert kinds == ["created", "started", "step_advanced"]
        # An abort on one replica reaches the other's routing within one refresh interval.
        assert (await act(one, "abort")).status_code == 200
        await two.app.state.gateway.snapshot.reload()
        assert two.app.state.gateway.snapshot.current.routes["chat"].split is None


# --- surfaces ----------------------------------------------------------------------------


async def test_analysis_endpoint_is_shaped_for_argo_web_metrics(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = GOOD
    await shadowed(gw, clock, 0)
    early = await gw.client.get("/v1/admin/rollouts/chat/analysis", headers=gw.auth(Role.SRE))
    assert early.json()["verdict"] == "inconclusive"
    await send(gw, ENOUGH)
    await flushed(gw, "shadow", ENOUGH)
    r = await gw.client.get("/v1/admin/rollouts/chat/analysis", headers=gw.auth(Role.SRE))
    body = r.json()
    assert (r.status_code, body["verdict"], body["phase"]) == (200, "pass", "shadow")
    assert body["candidate"]["samples"] == ENOUGH and body["stable"]["samples"] == ENOUGH
    assert body["candidate"]["agreement_by_field"] == {"category": 1.0, "urgency": 1.0}
    assert {g["gate"] for g in body["gates"]} == {"error_rate", "agreement"}
    errors = next(g for g in body["gates"] if g["gate"] == "error_rate")
    assert errors["interval"]["high"] <= errors["limit"] == 0.3
    assert errors["samples"] == {"candidate": ENOUGH, "stable": ENOUGH}
    assert errors["sentence"].startswith("candidate error rate 0.0 % [0.0, ")
    assert errors["sentence"].endswith("within the 30-point tolerance")
    schema = (await gw.client.get("/openapi.json")).json()
    assert "/v1/admin/rollouts/{route}/analysis" in schema["paths"]
    assert "/v1/admin/rollouts/{route}/abort" in schema["paths"]


async def test_status_view_renders_for_the_cli(gw: Harness, clock: Clock) -> None:
    from rollout.cli import render

    await shadowed(gw, clock, 0)
    text = render(await status(gw))
    assert "phase shadow, step 1 of 2, canary 0%, shadow 100%" in text
    assert "gate agreement" in text and "inconclusive" in text
    assert "started" in text and json.dumps(quick_spec()["candidate"]).strip('"') in text


async def test_the_last_figures_stay_readable_after_a_rollback(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    from rollout.cli import render

    engine.by_model["triage@2"] = WORSE
    await shadowed(gw, clock, ENOUGH)
    await tick(gw, clock)
    ended = await tick(gw, clock)
    assert (ended["phase"], ended["analysis"]) == ("rolled_back", None)
    figures = ended["last_figures"]
    assert figures["analysed_at"].startswith(clock.now.isoformat()[:19])
    assert (figures["stable"]["samples"], figures["candidate"]["samples"]) == (ENOUGH, ENOUGH)
    assert figures["candidate"]["agreement_by_field"] == {"category": 0.0, "urgency": 1.0}
    assert figures["candidate"]["error_rate"] == 0.0
    assert figures["candidate"]["latency_p95_ms"] is not None
    assert {g["gate"]: g["verdict"] for g in ended["last_verdicts"]}["agreement"] == "fail"
    text = render(ended)
    assert "last analysis at" in text and "category 0.0%, urgency 100.0%" in text
    assert "gate agreement" in text


async def test_a_command_keeps_the_figures_of_the_analysis_before_it(
    gw: Harness, engine: FakeEngine, clock: Clock
) -> None:
    engine.by_model["triage@2"] = GOOD
    await shadowed(gw, clock, 6)
    judged = await tick(gw, clock, 5)  # inside the step's minimum duration: judged, not moved
    assert judged["phase"] == "shadow" and judged["last_figures"]["candidate"]["samples"] == 6
    aborted = (await act(gw, "abort", "wrong data")).json()
    assert aborted["phase"] == "aborted"
    assert aborted["last_figures"] == judged["last_figures"]
    assert aborted["last_verdicts"] == judged["last_verdicts"]
    assert (await status(gw))["last_figures"] == judged["last_figures"]


@pytest.mark.parametrize(("action", "phase"), [("abort", "aborted"), ("pause", "paused")])
async def test_status_watch_redraws_until_the_rollout_is_paused_or_ends(
    gw: Harness, clock: Clock, monkeypatch: pytest.MonkeyPatch, action: str, phase: str
) -> None:
    from typer.testing import CliRunner

    from rollout import cli as cli_rollout
    from service.cli.app import app

    await shadowed(gw, clock, 0)
    waits: list[float] = []
    async with served(gw.app) as url:

        def act_after_two_draws(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:
                done = httpx.post(
                    f"{url}/v1/admin/rollouts/chat/{action}", headers=gw.auth(Role.SRE)
                )
                done.raise_for_status()

        monkeypatch.setattr(cli_rollout, "_wait", act_after_two_draws)
        args = ["rollout", "status", "chat", "--watch", "--interval", "0.5"]
        args += ["--key", gw.keys[Role.SRE], "--url", url]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert waits == [0.5, 0.5]
    draws = result.output.split("\n\nrollout ")  # not a terminal: no clearing, one after another
    assert len(draws) == 3 and "\x1b[" not in result.output
    assert all("phase shadow," in d for d in draws[:2]) and f"phase {phase}" in draws[2]


def test_phase_names_match_the_design() -> None:
    """The design's phases, and ``evaluating``: the offline evaluate step before shadow."""
    assert [p.value for p in Phase] == [
        "pending", "evaluating", "shadow", "canary", "paused", "promoted", "rolled_back",
        "aborted",
    ]  # fmt: skip
