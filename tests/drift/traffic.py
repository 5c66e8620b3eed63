"""Synthetic request records for drift tests, written straight into the database (fast).

Distributions are drawn from a seeded generator, so a test sees the same data on every run,
and shifted traffic is shifted far past the bands (no decision rests on a near-threshold score).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import async_sessionmaker

from adapters.dataset import example_data
from service.db.models import ReviewItem, Route
from service.records import store

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
CATEGORIES = ("billing", "technical", "account", "shipping", "other")
SHARES = (0.4, 0.25, 0.15, 0.12, 0.08)
TICKETS_SCHEMA = example_data("tickets.schema.json")


@dataclass(frozen=True)
class Traffic:
    """What the synthetic version answers; the defaults are the unchanged traffic."""

    prompt_scale: float = 1.0
    categories: Sequence[str] = CATEGORIES
    shares: Sequence[float] = SHARES
    confidence_shift: float = 0.0
    latency_scale: float = 1.0  # load on the machine: slower, same answers
    streamed: bool = False  # streams: a time to first token, a third of the latency


def rows(
    rng: np.random.Generator, n: int, *, start: datetime, route: str = "triage",
    target: str = "triage@1", traffic: Traffic = Traffic(), arm: str = "stable",
    spacing_s: float = 1.0,
) -> list[dict[str, Any]]:  # fmt: skip
    prompts = np.round(rng.lognormal(4.0, 0.5, n) * traffic.prompt_scale)
    completions = np.round(rng.lognormal(3.0, 0.3, n))
    latency = rng.lognormal(5.0, 0.4, n) * traffic.latency_scale
    confidence = np.clip(rng.beta(8, 2, n) - traffic.confidence_shift, 0.0, 1.0)
    categories = rng.choice(list(traffic.categories), n, p=list(traffic.shares))
    urgency = rng.choice(["1", "2", "3"], n, p=[0.3, 0.5, 0.2])
    valid = rng.random(n) < 0.97
    out = []
    for i in range(n):
        out.append(
            {
                "id": uuid.uuid4().hex, "created_at": start + timedelta(seconds=i * spacing_s),
                "endpoint": "chat", "key_id": None, "route": route, "target": target, "arm": arm,
                "replica": None, "stream": False, "status_code": 200, "error_type": None,
                "error_code": None, "latency_ms": float(latency[i]),
                "ttft_ms": float(latency[i]) / 3 if traffic.streamed else None,
                "tokens_in": int(prompts[i]), "tokens_out": int(completions[i]),
                "finish_reason": "stop", "attempts": 1, "request_body": None,
                "response_body": None, "rollout_id": None, "shadow_of": None, "agreement": None,
                "schema_valid": bool(valid[i]), "confidence": float(confidence[i]),
                "escalated": bool(confidence[i] < 0.5),
                "fields": {"category": str(categories[i]), "urgency": str(urgency[i])},
            }
        )  # fmt: skip
    return out


async def write(sessions: async_sessionmaker[Any], records: list[dict[str, Any]]) -> None:
    async with sessions.begin() as session:
        await store.insert_records(session, records)


async def add_route(
    sessions: async_sessionmaker[Any], name: str = "triage", target: str = "triage@1",
    schema: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
    monitoring: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    async with sessions.begin() as session:
        session.add(
            Route(
                name=name, pool="default", target=target, description="", updated_at=T0,
                output_schema=schema or json.loads(TICKETS_SCHEMA.read_text()),
                review_policy=policy or {"escalate": "below", "threshold": 0.5},
                monitoring=monitoring,
            )
        )  # fmt: skip


async def add_reviews(
    sessions: async_sessionmaker[Any], records: list[dict[str, Any]], states: Sequence[str]
) -> None:
    """A decided review item for each record, in turn approved, corrected or rejected."""
    async with sessions.begin() as session:
        for record, state in zip(records, states, strict=False):
            session.add(
                ReviewItem(
                    id=uuid.uuid4().hex, request_id=record["id"], route=record["route"],
                    target=record["target"], reason="low_confidence", priority=0, state=state,
                    created_at=record["created_at"], claim_token=1, expiries=0, answer="{}",
                )
            )  # fmt: skip
