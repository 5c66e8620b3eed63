"""The database aggregates a rollout's window exactly as the pure figures do from samples."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from rollout import store as rollout_store
from rollout.core.figures import ArmFigures, Sample, window
from rollout.core.machine import State
from rollout.core.spec import RolloutSpec
from rollout.core.split import Arm
from service.db.models import RequestRecord
from service.db.session import create_engine, session_factory

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
LATENCY_ALPHA = 0.3


def rounded(arm: ArmFigures) -> ArmFigures:
    """Databases sum floats in another order: compare the mean to 9 places."""
    mean = arm.confidence_mean
    return replace(arm, confidence_mean=round(mean, 9) if mean is not None else None)


def random_samples(rng: random.Random, n: int) -> list[Sample]:
    samples = []
    for _ in range(n):
        arm = rng.choice([Arm.STABLE, Arm.SHADOW, Arm.CANARY])
        status = rng.choice([200, 200, 200, 200, 400, 499, 502, 504])
        flag = rng.choice([None, True, False])
        samples.append(
            Sample(
                arm, status, round(rng.uniform(5, 500), 3), flag, rng.choice([None, True, False]),
                rng.choice([None, round(rng.random(), 4)]),
                {"category": rng.random() < 0.7, "urgency": rng.random() < 0.5}
                if arm is Arm.SHADOW and rng.random() < 0.8 else None,
            )
        )  # fmt: skip
    return samples


def row(i: int, rollout_id: str, sample: Sample, at: datetime) -> dict[str, object]:
    return {
        "id": f"r{i}", "created_at": at, "endpoint": "chat", "key_id": None, "route": "chat",
        "target": "t@1", "arm": sample.arm.value, "replica": None, "stream": False,
        "status_code": sample.status_code, "error_type": None, "error_code": None,
        "latency_ms": sample.latency_ms, "ttft_ms": None, "tokens_in": None, "tokens_out": None,
        "finish_reason": None, "attempts": 1, "request_body": None, "response_body": None,
        "rollout_id": rollout_id, "shadow_of": None, "agreement": sample.agreement,
        "schema_valid": sample.schema_valid, "confidence": sample.confidence,
        "escalated": sample.escalated,
    }  # fmt: skip


async def test_window_aggregates_match_the_pure_figures(db_url: str) -> None:
    rng = random.Random(7)
    inside = random_samples(rng, 400)
    before = random_samples(rng, 50)  # earlier than the window: must not count
    other = random_samples(rng, 50)  # another rollout: must not count
    db = create_engine(db_url)
    sessions = session_factory(db)
    try:
        async with sessions.begin() as session:
            await session.execute(
                RequestRecord.__table__.insert(),
                [row(i, "ro1", s, NOW + timedelta(seconds=i)) for i, s in enumerate(inside)]
                + [row(1000 + i, "ro1", s, NOW - timedelta(hours=1)) for i, s in enumerate(before)]
                + [row(2000 + i, "ro2", s, NOW) for i, s in enumerate(other)],
            )
        rollout = rollout_store.StoredRollout(
            "ro1", "chat", "t@1", "t@2", RolloutSpec(candidate="t@2"), State.new(NOW), (), 1,
            None, NOW, NOW,
        )  # fmt: skip
        for arm in (Arm.SHADOW, Arm.CANARY):
            async with sessions() as session:
                got = await rollout_store.window(session, rollout, NOW, arm, (), LATENCY_ALPHA)
            want = window(inside, arm, None, LATENCY_ALPHA)
            assert rounded(got.stable) == rounded(want.stable)
            if arm is Arm.SHADOW:
                assert rounded(got.candidate) == rounded(want.candidate)
                assert sorted(map(sorted, (m.items() for m in got.agreements))) == sorted(
                    map(sorted, (m.items() for m in want.agreements))
                )
            else:
                assert rounded(got.candidate) == rounded(want.candidate)
                assert got.agreements == ()
            assert got.candidate.samples > 50 and got.stable.latency_p95_ms is not None
            # The p95's bounds are order statistics the database picks by rank, as Python does.
            # (Above, about 50 timed requests leave the p95 open: the equality checks that too.)
            assert got.stable.latency_p95_low_ms is not None
            assert got.stable.timed == want.stable.timed > 0
    finally:
        await db.dispose()


def test_verdicts_saved_before_gates_had_intervals_still_read() -> None:
    saved = {"gate": "error_rate", "verdict": "pass", "candidate": 0.01, "stable": 0.01,
             "limit": 0.02, "detail": "0.010 vs 0.010 (at most +0.02)"}  # fmt: skip
    result = rollout_store._verdict(saved)
    assert (result.verdict.value, result.detail, result.low, result.candidate_samples) == (
        "pass", "0.010 vs 0.010 (at most +0.02)", None, 0,
    )  # fmt: skip
    # And a verdict saved now reads back whole.
    [row] = rollout_store.verdict_rows([replace(result, low=-0.01, high=0.015, alpha=0.005)])
    assert rollout_store._verdict(row) == replace(result, low=-0.01, high=0.015, alpha=0.005)
