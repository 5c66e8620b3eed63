"""Drift monitoring through the real gateway in front of a fake engine: the write path fills
``fields``, the admin API's shape, roles and errors, the gauges, and the reference a rollout's
promotion freezes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from monitoring.metrics import Metrics
from service.auth import Role
from service.db.models import DriftReference, RequestRecord
from service.drift.monitor import DriftReport, ReferenceSpan, Rules, Span
from service.drift.slo import Health, ServiceHealth, Signal, SignalHealth, Targets
from service.drift.statistics import (
    Bands,
    Bin,
    FeatureDrift,
    Kind,
    MinSamples,
    RouteJudgement,
    Statistic,
    Status,
)
from service.drift.watch import DriftWatch
from tests.conftest import Harness, chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import Behaviour, FakeEngine
from tests.review.test_ui import routes_file

CHAT = "/v1/chat/completions"
VALID = Behaviour(
    tokens=['{"category":', '"billing",', '"urgency":', "2,", '"next_action":', '"Refund it"}']
)
FEATURE_KEYS = {
    "name", "kind", "statistic", "score", "p_value", "adjusted_p_value", "status", "threshold",
    "reference", "current",
}  # fmt: skip


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    engine.default = VALID
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path), drift_min_samples=5,
        drift_reference_min_samples=10, drift_interval_s=0.1,
    )  # fmt: skip
    async with running_gateway(settings) as h:
        yield h


async def ask(h: Harness, n: int, route: str = "triage") -> None:
    answers = await asyncio.gather(
        *(h.client.post(CHAT, json=chat_body(route), headers=h.auth()) for _ in range(n))
    )
    assert {a.status_code for a in answers} == {200}, answers[0].text


async def get(h: Harness, path: str, role: Role = Role.SRE) -> Any:
    return await h.client.get(f"/v1/admin/drift/{path}", headers=h.auth(role))


async def test_the_write_path_keeps_the_answers_fields_and_the_api_reports_them(
    harness: Harness,
) -> None:
    h = harness
    await ask(h, 12)
    rows = await h.records(12)
    assert len(rows) == 12
    assert {(r.route, r.schema_valid) for r in rows} == {("triage", True)}
    assert all(r.fields == {"category": "billing", "urgency": "2"} for r in rows)  # no free text
    r = await get(h, "triage")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "route", "target", "status", "reference", "current", "judgement", "features", "service",
    }  # fmt: skip
    assert (body["route"], body["target"], body["status"]) == ("triage", "fake-base", "ok")
    assert set(body["reference"]) == {
        "since", "until", "samples", "source", "needed", "ready", "ready_in_s",
    }  # fmt: skip
    reference = body["reference"]
    assert (reference["source"], reference["samples"], reference["ready"]) == (
        "first_records", 10, True,
    )  # fmt: skip
    judgement = body["judgement"]
    assert (judgement["false_alarm_rate"], judgement["min_samples"]) == (0.01, 5)
    assert judgement["measured"] is None  # under the smallest minimums the bench measures
    # Service health beside the drift, against the gateway's default targets.
    service = {s["signal"]: s for s in body["service"]["signals"]}
    assert set(service) == {"latency_p95_ms", "ttft_p95_ms", "error_rate", "limit_rate"}
    assert service["latency_p95_ms"]["target"] == 10000
    assert (service["error_rate"]["value"], service["error_rate"]["samples"]) == (0.0, 12)
    assert service["ttft_p95_ms"]["status"] == "insufficient"  # no streams
    assert set(body["current"]) == {"since", "until", "samples"}
    assert body["current"]["samples"] == 12
    features = {f["name"]: f for f in body["features"]}
    assert all(set(f) == FEATURE_KEYS for f in features.values())
    category = features["answer.category"]
    assert (category["kind"], category["statistic"], category["status"]) == ("category", "js", "ok")
    assert category["threshold"] == {"warn": 0.1, "drift": 0.2}
    assert category["reference"] == [{"label": "billing", "count": 10, "share": 1.0}]
    assert category["current"] == [{"label": "billing", "count": 12, "share": 1.0}]
    assert features["prompt_tokens"]["statistic"] == "psi"
    assert "answer.next_action" not in features  # free text is not binned
    assert "latency_ms" not in features and "error_class" not in features  # service health
    # The gauges, set by the background loop.
    series = (
        'loragate_drift_status{feature="answer.category",route="triage",status="ok",'
        'target="fake-base"} 1.0'
    )

    async def published() -> bool:
        return series in await h.metrics()

    await wait_until(published, what="the drift gauges")
    assert (
        'loragate_drift_score{feature="answer.category",route="triage",target="fake-base"} 0.0'
        in (await h.metrics())
    )


async def test_only_sre_and_admin_keys_see_drift_and_bad_input_gets_a_clear_400(
    harness: Harness,
) -> None:
    h = harness
    for role in (Role.APP, Role.REVIEWER):
        r = await get(h, "triage", role)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert (await get(h, "triage", Role.ADMIN)).status_code == 200
    assert (await h.client.get("/v1/admin/drift/triage")).status_code == 401
    missing = await get(h, "nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    naive = await get(h, "triage?since=2026-12-01T10:00:00")
    assert naive.status_code == 400
    assert naive.json()["error"] == {
        "message": "'since' needs a UTC offset, e.g. 2026-12-02T10:00:00Z.",
        "type": "invalid_request_error", "param": "since", "code": "invalid_request",
    }  # fmt: skip
    backwards = await get(h, "triage?since=2026-12-02T10:00:00Z&until=2026-12-02T09:00:00Z")
    assert backwards.status_code == 400 and "before" in backwards.json()["error"]["message"]
    garbage = await get(h, "triage?since=yesterday")
    assert garbage.status_code == 400 and garbage.json()["error"]["param"] == "since"
    unix = await get(h, "triage?until=0.5")  # not a Unix time either
    assert unix.status_code == 400 and unix.json()["error"]["param"] == "until"


async def test_an_sre_pins_and_unpins_the_reference(harness: Harness) -> None:
    h = harness
    await ask(h, 12)
    await h.records(12)
    path = "/v1/admin/drift/triage/reference"
    sre = h.auth(Role.SRE)
    now = datetime.now(UTC)
    hour_ago = (now - timedelta(hours=1)).isoformat()
    later = (now + timedelta(minutes=5)).isoformat()
    empty = await h.client.put(path, json={"since": hour_ago, "until": hour_ago}, headers=sre)
    assert empty.status_code == 400 and "before" in empty.json()["error"]["message"]
    extra = await h.client.put(path, json={"since": hour_ago, "until": later, "x": 1}, headers=sre)
    assert extra.status_code == 400
    old = (now - timedelta(hours=2)).isoformat()
    few = await h.client.put(path, json={"since": old, "until": hour_ago}, headers=sre)
    assert few.status_code == 400 and "at least 10" in few.json()["error"]["message"]
    app = await h.client.put(path, json={"since": hour_ago, "until": later}, headers=h.auth())
    assert app.status_code == 403
    pinned = await h.client.put(path, json={"since": hour_ago, "until": later}, headers=sre)
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["reference"]["source"] == "pinned"
    assert pinned.json()["reference"]["samples"] == 12
    assert (await get(h, "triage")).json()["reference"]["source"] == "pinned"
    assert (await h.client.delete(path, headers=sre)).status_code == 204
    assert (await h.client.delete(path, headers=sre)).status_code == 204
    assert (await get(h, "triage")).json()["reference"]["source"] == "first_records"
    # The refused pins and the second unpin changed nothing and left no event.
    audit = (await h.client.get("/v1/admin/audit", headers=sre)).json()["data"]
    assert [e["action"] for e in audit] == ["drift.unpin_reference", "drift.pin_reference"]
    assert audit[1]["object"] == "drift-reference:triage" and audit[1]["after"]["samples"] == 12


async def test_the_openapi_document_describes_the_drift_endpoints(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert {"get"} <= set(paths["/v1/admin/drift/{route}"])
    assert {"put", "delete"} <= set(paths["/v1/admin/drift/{route}/reference"])
    assert all(
        op.get("description")
        for path in ("/v1/admin/drift/{route}", "/v1/admin/drift/{route}/reference")
        for op in paths[path].values()
    )


RULES = Rules(
    3600, 10, 500, MinSamples(200, 200), Bands(0.1, 0.2), Bands(0.1, 0.2), 0.01,
    Targets(1000, 500, 0.05, 0.05),
)  # fmt: skip


def _report(
    status: Status, score: float | None, latency: Health = Health.OK, target: str = "t@1"
) -> DriftReport:
    feature = FeatureDrift(
        "answer.category", Kind.CATEGORY, Statistic.JS, score, None, status, Bands(0.1, 0.2),
        (Bin("a", 1, 1.0),), (Bin("a", 1, 1.0),),
    )  # fmt: skip
    slow = 3000.0 if latency is Health.BREACH else 300.0
    service = ServiceHealth((SignalHealth(Signal.LATENCY, slow, 1000, 50, latency),), {})
    return DriftReport(
        "triage", target, ReferenceSpan(None, None, 0, None), Span(None, None, 0),
        RouteJudgement((feature,), 0.01, 1, None), service, RULES,
    )  # fmt: skip


def test_service_signals_get_gauges_of_their_own_never_drifts() -> None:
    metrics = Metrics()
    watch = DriftWatch(None, metrics, 60)  # type: ignore[arg-type]  # publish needs no monitor
    labels = {"route": "triage", "target": "t@1", "signal": "latency_p95_ms"}

    def value(name: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(name, {**labels, **extra})

    watch.publish(_report(Status.OK, 0.01, Health.BREACH))
    assert value("loragate_service_status", status="breach") == 1.0
    assert value("loragate_service_status", status="ok") == 0.0
    assert (value("loragate_service_value"), value("loragate_service_target")) == (3000, 1000)
    drift = {"route": "triage", "target": "t@1", "feature": "answer.category", "status": "ok"}
    assert metrics.registry.get_sample_value("loragate_drift_status", drift) == 1.0
    assert metrics.registry.get_sample_value(
        "loragate_drift_status", {**labels, "feature": "latency_p95_ms", "status": "drift"}
    ) is None  # fmt: skip
    watch.publish(_report(Status.OK, 0.01, Health.OK))
    assert value("loragate_service_status", status="breach") == 0.0


def test_a_status_change_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    watch = DriftWatch(None, metrics, 60)  # type: ignore[arg-type]  # publish needs no monitor
    labels = {"route": "triage", "target": "t@1", "feature": "answer.category"}

    def value(name: str, **extra: str) -> float | None:
        return metrics.registry.get_sample_value(name, {**labels, **extra})

    watch.publish(_report(Status.OK, 0.01))
    assert value("loragate_drift_status", status="ok") == 1.0
    assert value("loragate_drift_status_changes_total", status="ok") is None  # not a change
    with caplog.at_level(logging.WARNING, logger="service.drift.watch"):
        watch.publish(_report(Status.DRIFT, 0.4))
    assert value("loragate_drift_status", status="drift") == 1.0
    assert value("loragate_drift_status", status="ok") == 0.0
    assert value("loragate_drift_score") == pytest.approx(0.4)
    assert value("loragate_drift_status_changes_total", status="drift") == 1.0
    assert any("ok -> drift" in m and "answer.category" in m for m in caplog.messages)
    watch.publish(_report(Status.DRIFT, 0.5))
    assert value("loragate_drift_status_changes_total", status="drift") == 1.0


async def test_a_rollout_promotion_freezes_the_new_versions_reference(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    from tests.adapters.test_placement import add_version
    from tests.rollout.test_rollouts import (
        ENOUGH,
        GOOD,
        Clock,
        flushed,
        quick_spec,
        send,
        start,
        tick,
    )  # fmt: skip

    clock = Clock()
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], rollout_tick_s=3600, drift_interval_s=0,
        drift_reference_min_samples=5, drift_min_samples=5,
    )  # fmt: skip
    async with running_gateway(settings, clock=clock) as h:
        await add_version(h, "triage", 1, tmp_path)
        await add_version(h, "triage", 2, tmp_path)
        r = await h.client.put(
            "/v1/admin/routes/chat/target", json={"target": "triage@1"}, headers=h.auth(Role.SRE)
        )
        assert r.status_code == 200, r.text
        engine.by_model["triage@1"] = engine.by_model["triage@2"] = GOOD
        started = await start(h, quick_spec())
        assert started.status_code == 200, started.text
        await tick(h, clock, 0)
        await send(h, ENOUGH)
        await flushed(h, "shadow", ENOUGH)
        assert (await tick(h, clock))["phase"] == "canary"
        for i in range(4 * ENOUGH):  # half the users are in the canary
            await h.client.post(CHAT, json=chat_body(user=f"user-{i}"), headers=h.auth())
        await flushed(h, "canary", ENOUGH)
        done = await tick(h, clock)
        assert done["phase"] == "promoted"
        async with h.app.state.gateway.sessions() as session:
            (frozen,) = (await session.scalars(select(DriftReference))).all()
            candidate = (
                await session.scalars(
                    select(RequestRecord).where(RequestRecord.target == "triage@2")
                )
            ).all()
        assert (frozen.route, frozen.target, frozen.source) == ("chat", "triage@2", "rollout")
        assert (frozen.rollout_id, frozen.pinned, frozen.profile) == (done["id"], False, None)
        assert frozen.since.replace(tzinfo=UTC) == datetime.fromisoformat(done["created_at"])
        # The first report computes it from the rollout's windows: shadow and canary answers.
        since = min(r.created_at for r in candidate).replace(tzinfo=UTC) - timedelta(seconds=1)
        query = f"chat?since={since.isoformat()}&until={datetime.now(UTC).isoformat()}"
        query = query.replace("+", "%2B")
        report = (await get(h, query)).json()
        assert report["target"] == "triage@2"
        assert report["reference"]["source"] == "rollout"
        assert report["reference"]["samples"] >= 5
