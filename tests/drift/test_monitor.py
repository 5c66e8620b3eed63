"""Drift reports from records written straight into SQLite and PostgreSQL: unchanged traffic
stays ok window after window, a synthetic shift drifts within one window, and references are
chosen, frozen, pinned and unpinned as documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.db.models import DriftReference, Route
from service.db.session import create_engine, session_factory
from service.drift.cli import render
from service.drift.monitor import DriftMonitor, DriftReport
from service.drift.schemas import DriftOut
from service.drift.slo import Health, Signal
from service.drift.statistics import Status
from service.errors import InvalidRequest, RouteNotFound
from tests.conftest import make_settings
from tests.drift.traffic import T0, Traffic, add_reviews, add_route, rows, write

REFERENCE = 2000  # records the automatic reference takes (the first ones, as stable)
WINDOW = 1000  # records per current window, one a second


@dataclass
class Setup:
    sessions: async_sessionmaker[Any]
    monitor: DriftMonitor
    rng: np.random.Generator


@pytest.fixture
async def setup(db_url: str, tmp_path: Path) -> AsyncIterator[Setup]:
    db = create_engine(db_url)
    sessions = session_factory(db)
    settings = make_settings(
        db_url, tmp_path, ["http://127.0.0.1:9"], drift_reference_min_samples=REFERENCE
    )
    await add_route(sessions)
    yield Setup(
        sessions,
        DriftMonitor(sessions, settings, lambda: T0 + timedelta(days=1)),
        np.random.default_rng(3),
    )
    await db.dispose()


def window(k: int) -> tuple[datetime, datetime]:
    """The k-th current window after the reference (WINDOW seconds each)."""
    start = T0 + timedelta(seconds=REFERENCE + k * WINDOW)
    return start, start + timedelta(seconds=WINDOW)


def statuses(report: DriftReport) -> dict[str, Status]:
    return {f.name: f.status for f in report.features}


async def test_unchanged_traffic_stays_ok_window_after_window(setup: Setup) -> None:
    await write(setup.sessions, rows(setup.rng, REFERENCE, start=T0))
    for k in range(3):
        since, until = window(k)
        await write(setup.sessions, rows(setup.rng, WINDOW, start=since))
        report = await setup.monitor.report("triage", since, until)
        assert report.current.samples == WINDOW
        assert report.reference.source == "first_records"
        seen = statuses(report)
        # No review decisions: too few values.
        assert {n for n, s in seen.items() if s is Status.INSUFFICIENT} == {"review_outcome"}
        assert {s for n, s in seen.items() if s is not Status.INSUFFICIENT} == {Status.OK}, seen
        assert report.status is Status.OK and report.judgement.tested == 7
        assert report.service.status is Health.OK
    names = [f.name for f in report.features]
    assert names == [
        "prompt_tokens", "completion_tokens", "confidence", "escalated", "schema_valid",
        "answer.category", "answer.urgency", "review_outcome",
    ]  # fmt: skip
    # Service health beside it: no streams, so no time to first token.
    signals = {s.signal: s.status for s in report.service.signals}
    assert signals == {
        Signal.LATENCY: Health.OK, Signal.TTFT: Health.INSUFFICIENT, Signal.ERRORS: Health.OK,
        Signal.CUT: Health.OK,
    }  # fmt: skip


async def test_a_synthetic_shift_is_flagged_drift_within_one_window(setup: Setup) -> None:
    await write(setup.sessions, rows(setup.rng, REFERENCE, start=T0))
    since, until = window(0)
    shifted = Traffic(
        prompt_scale=2.5,  # longer prompts
        categories=("billing", "technical", "account", "shipping", "other", "legal"),
        shares=(0.3, 0.2, 0.1, 0.05, 0.05, 0.3),  # a category never seen before
        confidence_shift=0.35,  # lower confidence
    )
    await write(setup.sessions, rows(setup.rng, WINDOW, start=since, traffic=shifted))
    report = await setup.monitor.report("triage", since, until)
    seen = statuses(report)
    for name in ("prompt_tokens", "answer.category", "confidence"):
        assert seen[name] is Status.DRIFT, (name, seen)
    for name in ("completion_tokens", "answer.urgency"):
        assert seen[name] is Status.OK, (name, seen)
    assert report.status is Status.DRIFT
    category = next(f for f in report.features if f.name == "answer.category")
    legal = next(b for b in category.current if b.label == "legal")
    assert (
        legal.count > 200 and next(b for b in category.reference if b.label == "legal").count == 0
    )
    assert category.p_value is not None and category.p_value < 1e-6


async def test_the_automatic_reference_waits_for_enough_records_then_stays_frozen(
    setup: Setup,
) -> None:
    first = rows(setup.rng, REFERENCE + 500, start=T0)
    await write(setup.sessions, first[:300])
    until = T0 + timedelta(days=1)
    early = await setup.monitor.report("triage", T0, until)
    # Not ready: what it holds so far, and when it will be ready at the last day's rate (the
    # clock reads a day after the first record: 300 records a day).
    reference = early.reference
    assert (reference.source, reference.ready) == (None, False)
    assert (reference.samples, reference.needed) == (300, REFERENCE)
    assert reference.ready_in_s == pytest.approx((REFERENCE - 300) * 86400 / 300)
    assert {f.status for f in early.features} == {Status.INSUFFICIENT}  # never ok without one
    await write(setup.sessions, first[300:])
    report = await setup.monitor.report("triage", T0, until)
    assert report.reference.source == "first_records" and report.reference.ready
    assert report.reference.since == T0 and report.reference.samples == REFERENCE
    assert report.reference.until == first[REFERENCE - 1]["created_at"] + timedelta(microseconds=1)
    # Frozen: records added inside its range later change nothing.
    late = rows(
        setup.rng, 50, start=T0 + timedelta(milliseconds=500), traffic=Traffic(prompt_scale=9)
    )
    await write(setup.sessions, late)
    again = await setup.monitor.report("triage", T0, until)
    assert again.reference == report.reference
    prompts = {f.name: f for f in again.features}["prompt_tokens"]
    assert prompts.reference == {f.name: f for f in report.features}["prompt_tokens"].reference


async def test_only_the_stable_arm_makes_a_first_records_reference(setup: Setup) -> None:
    shadow = rows(setup.rng, REFERENCE, start=T0, arm="shadow")
    await write(setup.sessions, shadow)
    report = await setup.monitor.report("triage", T0, T0 + timedelta(days=1))
    assert report.reference.source is None


async def test_an_sre_pins_the_reference_and_unpins_it(setup: Setup) -> None:
    await write(setup.sessions, rows(setup.rng, REFERENCE + 2 * WINDOW, start=T0))
    pin_since, pin_until = window(0)
    with pytest.raises(InvalidRequest, match="at least 2000"):
        await setup.monitor.pin("triage", pin_since, pin_until, "sre (k1)")
    with pytest.raises(InvalidRequest, match="before"):
        await setup.monitor.pin("triage", pin_until, pin_since, "sre (k1)")
    target, span = await setup.monitor.pin("triage", pin_since, window(1)[1], "sre (k1)")
    assert (target, span.source, span.samples) == ("triage@1", "pinned", 2 * WINDOW)
    report = await setup.monitor.report("triage", *window(1))
    assert (report.reference.source, report.reference.since) == ("pinned", pin_since)
    async with setup.sessions() as session:
        rows_ = (await session.scalars(select(DriftReference))).all()
    assert [(r.pinned, r.source, r.created_by) for r in rows_] == [(True, "pinned", "sre (k1)")]
    assert await setup.monitor.unpin("triage") == ("triage@1", True)
    assert await setup.monitor.unpin("triage") == ("triage@1", False)  # idempotent
    back = await setup.monitor.report("triage", *window(1))
    assert back.reference.source == "first_records"


async def test_a_version_switched_in_is_held_against_the_routes_pinned_past(
    setup: Setup,
) -> None:
    """The demo's story: @1 answers well; the route is switched to @2 (labels shuffled); the
    SRE pins @2's reference to the weeks @1 served, so @2's new category mix shows as drift,
    while a good @3 switched in the same way stays ok."""
    await write(setup.sessions, rows(setup.rng, REFERENCE, start=T0))  # served by @1
    pin_since, pin_until = T0, T0 + timedelta(seconds=REFERENCE)
    shuffled = Traffic(shares=(0.08, 0.12, 0.4, 0.15, 0.25))  # same labels, mixed up
    cases = {"triage@2": (shuffled, Status.DRIFT), "triage@3": (Traffic(), Status.OK)}
    for k, (version, (traffic, expected)) in enumerate(cases.items()):
        async with setup.sessions.begin() as session:  # loragate routes set-target
            await session.execute(
                update(Route).where(Route.name == "triage").values(target=version)
            )
        since, until = window(k)
        await write(
            setup.sessions, rows(setup.rng, WINDOW, start=since, target=version, traffic=traffic)
        )
        target, span = await setup.monitor.pin("triage", pin_since, pin_until, "sre (k1)")
        assert (target, span.samples) == (version, REFERENCE)  # @1's records, for this version
        report = await setup.monitor.report("triage", since, until)
        assert report.target == version and report.reference.source == "pinned"
        assert statuses(report)["answer.category"] is expected, statuses(report)


async def test_reviewers_decisions_are_a_feature(setup: Setup) -> None:
    reference = rows(setup.rng, REFERENCE, start=T0)
    since, until = window(0)
    current = rows(setup.rng, WINDOW, start=since)
    await write(setup.sessions, reference + current)
    await add_reviews(setup.sessions, reference[:600], ["approved"] * 500 + ["corrected"] * 100)
    await add_reviews(setup.sessions, current[:300], ["rejected"] * 200 + ["approved"] * 100)
    report = await setup.monitor.report("triage", since, until)
    review = next(f for f in report.features if f.name == "review_outcome")
    assert {b.label: b.count for b in review.reference} == {
        "approve": 500, "correct": 100, "reject": 0,
    }  # fmt: skip
    assert {b.label: b.count for b in review.current}["reject"] == 200
    assert review.status is Status.DRIFT


async def test_number_answer_fields_are_binned_and_odd_values_skipped(setup: Setup) -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "number"}, "label": {"type": "string", "maxLength": 8}},
    }
    await add_route(setup.sessions, "scores", "s@1", schema=schema, policy={"escalate": "never"})
    values = setup.rng.normal(50, 5, REFERENCE + WINDOW)
    records = rows(setup.rng, REFERENCE + WINDOW, start=T0, route="scores", target="s@1")
    for record, value in zip(records, values, strict=True):
        record["fields"] = {"score": float(value), "label": "a"}
    records[-1]["fields"] = {"score": "not a number", "label": "a"}  # from an older schema
    await write(setup.sessions, records)
    report = await setup.monitor.report("scores", *window(0))
    features = {f.name: f for f in report.features}
    assert "review_outcome" not in features  # the policy never escalates
    score = features["answer.score"]
    assert score.kind.value == "number" and score.status is Status.OK
    assert score.current_n == WINDOW - 1 and len(score.reference) == 10


async def test_bad_requests_are_refused(setup: Setup) -> None:
    with pytest.raises(RouteNotFound):
        await setup.monitor.report("nope")
    with pytest.raises(InvalidRequest, match="before"):
        await setup.monitor.report("triage", T0, T0)


async def test_load_on_the_machine_is_service_health_never_drift(setup: Setup) -> None:
    """Latency and time to first token three times longer, the same answers: the drift status
    stays ok (they are not features), and the service signal breaches the route's targets."""
    targets = {"service": {"latency_p95_ms": 500, "ttft_p95_ms": 200}}
    await add_route(setup.sessions, "loaded", "l@1", monitoring=targets)
    streams = Traffic(streamed=True)
    await write(setup.sessions, rows(setup.rng, REFERENCE, start=T0, route="loaded",
                                     target="l@1", traffic=streams))  # fmt: skip
    busy = Traffic(streamed=True, latency_scale=3.0)
    seen: dict[str, DriftReport] = {}
    for k, (name, traffic) in enumerate((("quiet", streams), ("busy", busy))):
        since, until = window(k)
        await write(setup.sessions, rows(setup.rng, WINDOW, start=since, route="loaded",
                                         target="l@1", traffic=traffic))  # fmt: skip
        seen[name] = await setup.monitor.report("loaded", since, until)
    for report in seen.values():
        assert report.status is Status.OK, statuses(report)
        assert not {"latency_ms", "ttft_ms"} & {f.name for f in report.features}
    quiet = {s.signal: s for s in seen["quiet"].service.signals}
    busy_ = {s.signal: s for s in seen["busy"].service.signals}
    assert seen["quiet"].service.status is Health.OK
    assert seen["busy"].service.status is Health.BREACH
    for signal, target in ((Signal.LATENCY, 500), (Signal.TTFT, 200)):
        assert quiet[signal].status is Health.OK and busy_[signal].status is Health.BREACH
        assert busy_[signal].target == target and busy_[signal].samples == WINDOW
        assert busy_[signal].value == pytest.approx(3 * (quiet[signal].value or 0), rel=0.2)
    assert busy_[Signal.ERRORS].status is Health.OK and busy_[Signal.ERRORS].target == 0.05


async def test_a_quiet_route_sees_when_its_reference_is_ready_and_may_set_smaller_minimums(
    setup: Setup,
) -> None:
    now = T0 + timedelta(days=1)  # the monitor's clock
    smaller = {"drift": {"min_samples": 50, "reference_min_samples": 100}}
    await add_route(setup.sessions, "quiet", "q@1", monitoring=smaller)
    first = rows(setup.rng, 40, start=now - timedelta(minutes=40), route="quiet", target="q@1",
                 spacing_s=60)  # fmt: skip
    await write(setup.sessions, first)
    early = await setup.monitor.report("quiet")
    # 40 records in the 40 minutes since the first: 60 more take about an hour.
    assert (early.reference.samples, early.reference.needed) == (40, 100)
    assert early.reference.ready_in_s == pytest.approx(3600)
    assert {f.status for f in early.features} == {Status.INSUFFICIENT}
    view = render(DriftOut.of(early)).splitlines()
    assert view[1] == (
        "reference (automatic): 40 of 100 records, ready in about 1 h at today's rate"
    )
    assert "judged once the reference is ready" in view[3]
    more = rows(setup.rng, 100, start=now - timedelta(minutes=39, seconds=30), route="quiet",
                target="q@1", spacing_s=20)  # fmt: skip
    await write(setup.sessions, more)
    report = await setup.monitor.report("quiet")
    assert report.reference.ready and report.reference.samples == 100
    assert report.current.samples == 140
    judged = {f.name: f.status for f in report.features if f.name != "review_outcome"}
    assert Status.INSUFFICIENT not in judged.values(), judged
    assert report.rules.minimum.current == 50 and report.rules.reference_min == 100
    cost = report.rules.cost
    assert cost is not None and (cost.reference, cost.window) == (100, 50)
    assert cost.false_alarms <= 0.01  # held by the correction, whatever the minimums
    out = DriftOut.of(report)
    assert out.judgement.measured is not None and out.judgement.min_samples == 50
    # The default route keeps the gateway's minimums.
    default = await setup.monitor.report("triage")
    assert default.rules.reference_min == REFERENCE and default.rules.minimum.current == 200
