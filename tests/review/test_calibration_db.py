"""Calibration from reviewed items, read from the database: the stats API's figures per
version, and ``loragate reviews thresholds``. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.auth import Role
from service.db.models import RequestRecord, ReviewItem
from service.db.session import create_engine, session_factory
from service.review import api as reviews
from tests.conftest import Harness, make_settings, running_gateway
from tests.fake_engine import FakeEngine
from tests.review.test_export import reviews_cli

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def item(
    n: int, target: str, state: str, confidence: float | None, *, route: str = "triage",
    corrected: str | None = None, at: datetime = NOW,
) -> ReviewItem:  # fmt: skip
    return ReviewItem(
        id=f"item{n:05d}{target}", request_id=f"req{n}", route=route, target=target,
        reason="low_confidence", priority=0, state=state, created_at=at - timedelta(minutes=1),
        claim_token=1, expiries=0, answer='{"category": "billing", "urgency": 2}',
        confidence=confidence,
        field_confidence={"/category": confidence, "/urgency": 0.9} if confidence else None,
        decided_at=at if state != "pending" else None, corrected_answer=corrected,
    )  # fmt: skip


def record(n: int, target: str, arm: str, confidence: float, at: datetime) -> RequestRecord:
    return RequestRecord(
        id=f"rec{n:05d}", created_at=at, endpoint="chat", route="triage", target=target,
        arm=arm, stream=False, status_code=200, latency_ms=10.0, attempts=1,
        confidence=confidence,
    )  # fmt: skip


async def insert(url: str, rows: list[Any]) -> None:
    engine = create_engine(url)
    try:
        async with session_factory(engine).begin() as session:
            session.add_all(rows)
    finally:
        await engine.dispose()


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        h.app.dependency_overrides[reviews.review_clock] = lambda: NOW
        yield h


async def test_stats_show_each_versions_calibration(harness: Harness) -> None:
    h = harness
    fixed = '{"category": "bug", "urgency": 2}'
    await insert(h.url, [
        item(1, "m@1", "approved", 0.8), item(2, "m@1", "approved", 0.8),
        item(3, "m@1", "corrected", 0.3, corrected=fixed), item(4, "m@1", "rejected", 0.35),
        item(5, "m@2", "approved", 0.95),
        item(6, "m@2", "pending", 0.2), item(7, "m@2", "approved", None),  # neither counts
        item(8, "m@2", "approved", 0.5, at=NOW - timedelta(days=40)),  # before the window
        item(9, "m@1", "approved", 0.1, route="other"),
    ])  # fmt: skip
    response = await h.client.get("/v1/reviews/stats", headers=h.auth(Role.REVIEWER))
    assert response.status_code == 200, response.text
    shown = {(v["route"], v["target"]): v for v in response.json()["calibration"]}
    assert list(shown) == [("other", "m@1"), ("triage", "m@1"), ("triage", "m@2")]
    first = shown[("triage", "m@1")]["answers"]
    assert first["n"] == 4 and first["accuracy"] == 0.5
    # Brier: two kept at 0.8 (0.04 each), two changed at 0.3 and 0.35.
    assert math.isclose(first["brier"], (0.04 + 0.04 + 0.09 + 0.1225) / 4)
    # Two bins: [0.3, 0.4) kept 0 of 2 at mean 0.325, [0.8, 0.9) kept 2 of 2 at 0.8.
    assert math.isclose(first["ece"], (2 * 0.325 + 2 * 0.2) / 4)
    counts = [(b["low"], b["count"], b["accuracy"]) for b in first["bins"] if b["count"]]
    assert counts == [(0.3, 2, 0.0), (0.8, 2, 1.0)]
    # Fields: the corrected answer's category was wrong, its urgency right; the rejected
    # answer says nothing of its fields.
    fields = shown[("triage", "m@1")]["fields"]
    assert fields["n"] == 6 and math.isclose(fields["accuracy"], 5 / 6)
    assert shown[("triage", "m@2")]["answers"]["n"] == 1

    limited = await h.client.get(
        "/v1/reviews/stats", params={"window_days": 60}, headers=h.auth(Role.REVIEWER)
    )
    older = {(v["route"], v["target"]): v for v in limited.json()["calibration"]}
    assert older[("triage", "m@2")]["answers"]["n"] == 2

    # The reviewer UI's queue page shows the same figures with a reliability diagram.
    login = {"key": h.keys[Role.REVIEWER]}
    await h.client.post("/review/login", data=login, headers={"Origin": "http://gateway"})
    page = (await h.client.get("/review")).text
    row = page.split('data-route="triage" data-target="m@1"')[1].split("</tr>")[0]
    assert '<td class="ece">0.26' in row and '<td class="brier">0.073</td>' in row
    assert page.count('class="reliability"') == 3  # one a version, in the last 30 days


def cli(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    return reviews_cli(db_url, monkeypatch, tmp_path, "thresholds", *args)


def reviewed_items(count: int, now: datetime) -> list[ReviewItem]:
    """Answers under 0.3 were changed 97 % of the time, those above it 20 %."""
    rng = random.Random(7)
    rows = []
    for n in range(count):
        c = round(rng.random(), 4)
        wrong = rng.random() < (0.97 if c < 0.3 else 0.2)
        rows.append(item(n, "m@1", "rejected" if wrong else "approved", c, at=now))
    return rows


def test_thresholds_proposes_one_with_its_held_out_precision_and_daily_escalations(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(days=2)
    records = [
        *(record(n, "m@1", "stable", 0.1, start + timedelta(hours=n)) for n in range(30)),
        *(record(100 + n, "m@1", "canary", 0.9, start + timedelta(hours=n)) for n in range(50)),
        *(record(200 + n, "m@1", "shadow", 0.1, start) for n in range(20)),  # never escalated
        *(record(300 + n, "m@2", "stable", 0.1, start) for n in range(10)),  # another version
        *(record(400 + n, "m@1", "stable", 0.1, now - timedelta(days=9)) for n in range(10)),
    ]  # fmt: skip
    asyncio.run(insert(db_url, [*reviewed_items(1200, now), *records]))
    result = cli(db_url, monkeypatch, tmp_path, "triage", "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "route triage, version m@1" in out and "calibration of 1200 reviewed answers" in out
    threshold = float(out.split("proposed threshold ")[1].split()[0])
    assert 0.28 <= threshold <= 0.45
    assert "precision held out: " in out
    # 30 answers under it over the two days since the version's first answer in the window.
    assert "escalations a day at the recent rate: 15.0 (30 of 80 answers over 2.00 days)" in out


def test_thresholds_says_when_too_few_answers_were_reviewed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(insert(db_url, reviewed_items(40, datetime.now(UTC))))
    result = cli(db_url, monkeypatch, tmp_path, "triage", "--version", "m@1")
    assert result.exit_code == 1
    assert "too few reviewed answers to propose a threshold: 40; at least 278 are needed" in (
        result.output
    )
    nothing = cli(db_url, monkeypatch, tmp_path, "elsewhere")
    assert nothing.exit_code == 1 and "no reviewed answers" in nothing.output
