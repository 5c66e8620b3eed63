"""Records from the spool into the database: the shipper, exactly once, refusals, retention,
held answers, a full spool. On SQLite and PostgreSQL wherever a test takes ``db_url``.

The fault tests that kill or cut the real gateway process are in ``test_record_faults.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from monitoring.metrics import Metrics
from service.auth import Role
from service.clock import as_utc
from service.db.models import RequestRecord, ReviewItem
from service.db.session import create_engine, session_factory
from service.records.draft import FinishedRecord, encode
from service.records.service import shipping, writer
from service.records.shipper import Shipper
from service.records.spool import Spool, frame
from service.records.store import prune_records, pruner
from service.review.queue import NewItem
from service.review.shipped import write_shipped_items
from tests.conftest import chat_body, make_settings, running_gateway, wait_until
from tests.fake_engine import MODEL, Behaviour, FakeEngine
from tests.guard.test_output_contracts import ROUTE, SURE, TOKENS, routes_file

CHAT = "/v1/chat/completions"

ship_records = shipping(write_shipped_items)
write_records = writer(write_shipped_items)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4().hex, "created_at": datetime.now(UTC), "endpoint": "chat",
        "key_id": "abc", "route": "chat", "target": MODEL, "arm": "stable",
        "replica": "http://127.0.0.1:9", "stream": False, "status_code": 200,
        "error_type": None, "error_code": None, "latency_ms": 1.5, "ttft_ms": None,
        "tokens_in": 3, "tokens_out": 4, "finish_reason": "stop", "attempts": 1,
        "request_body": "{}", "response_body": "{}", "rollout_id": None, "shadow_of": None,
        "agreement": {"category": True}, "schema_valid": True, "confidence": 0.9,
        "escalated": False,
    }  # fmt: skip
    row.update(overrides)
    return row


def _escalated() -> FinishedRecord:
    row = _row(escalated=True)
    item = NewItem(
        request_id=row["id"], route="chat", target=MODEL, reason="low_confidence",
        answer='{"category": "billing"}', created_at=row["created_at"],
        field_confidence={"category": 0.3}, item_id=uuid.uuid4().hex,
    )  # fmt: skip
    return FinishedRecord(row, asdict(item))


async def _count(db: AsyncEngine, model: type[Any]) -> int:
    async with session_factory(db)() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


class Spooled:
    """A spool and a shipper on it, as the gateway builds them, on a test's database."""

    def __init__(
        self, tmp_path: Path, db_url: str, sink: Any = ship_records, maintenance: Any = None
    ) -> None:
        self.metrics = Metrics()
        self.spool = Spool(tmp_path / "spool", max_bytes=10**9)
        self.spool.open()
        self.shipper = Shipper(
            self.spool, lambda: create_engine(db_url), sink, self.metrics, NoOpTracer(),
            interval_s=0.02, batch_records=7, fsync_interval_s=0.2,
            maintenance=maintenance, maintenance_every_s=0.05,
        )  # fmt: skip

    def add(self, *records: FinishedRecord) -> None:
        for record in records:
            self.spool.append(encode(record))

    async def shipped(self, n: int) -> None:
        await wait_until(
            lambda: _sample(self.metrics, "loragate_records_shipped_total") >= n,
            timeout_s=30, what=f"{n} records shipped",
        )  # fmt: skip

    def stop(self) -> None:
        assert self.shipper.stop(30)
        self.spool.close()


async def test_records_and_their_review_items_arrive_whole(
    db_url: str, db: AsyncEngine, tmp_path: Path
) -> None:
    spooled = Spooled(tmp_path, db_url)
    plain = [FinishedRecord(_row(), None) for _ in range(20)]
    escalated = _escalated()
    spooled.add(*plain, escalated)
    spooled.shipper.start()
    await spooled.shipped(21)
    spooled.stop()

    assert await _count(db, RequestRecord) == 21
    async with session_factory(db)() as session:
        stored = await session.get(RequestRecord, escalated.row["id"])
        item = await session.scalar(select(ReviewItem))
    assert stored is not None and stored.agreement == {"category": True}
    assert as_utc(stored.created_at) == escalated.row["created_at"]
    assert item is not None and escalated.review is not None
    assert (item.id, item.request_id, item.state) == (
        escalated.review["item_id"], escalated.row["id"], "pending",
    )  # fmt: skip
    assert item.field_confidence == {"category": 0.3}
    assert spooled.spool.ready() == [] and spooled.spool.size_bytes == 0


async def test_a_segment_shipped_twice_inserts_nothing_twice(
    db_url: str, db: AsyncEngine, tmp_path: Path
) -> None:
    """A crash after the commit and before the delete ships the segment again at start."""
    records = [FinishedRecord(_row(), None) for _ in range(5)] + [_escalated()]
    first = Spooled(tmp_path / "a", db_url)
    first.add(*records)
    first.shipper.start()
    await first.shipped(6)
    first.stop()

    # The same frames again, as a leftover segment the next process finds.
    again = tmp_path / "b" / "spool"
    again.mkdir(parents=True)
    (again / f"{1:012d}.ready").write_bytes(b"".join(frame(encode(r)) for r in records))
    second = Spooled(tmp_path / "b", db_url)
    second.shipper.start()
    await second.shipped(6)
    second.stop()
    assert await _count(db, RequestRecord) == 6
    assert await _count(db, ReviewItem) == 1


async def test_a_refused_record_is_dropped_alone_and_counted(
    db_url: str, db: AsyncEngine, tmp_path: Path
) -> None:
    spooled = Spooled(tmp_path, db_url)
    bad = _row()
    del bad["endpoint"]  # NOT NULL: the database refuses this row
    spooled.add(FinishedRecord(_row(), None), FinishedRecord(bad, None))
    spooled.spool.append(b"not a record at all")
    spooled.add(FinishedRecord(_row(), None))
    spooled.shipper.start()
    await wait_until(
        lambda: _sample(spooled.metrics, "loragate_records_dropped_total", reason="rejected") == 2,
        timeout_s=30, what="two rejections",
    )  # fmt: skip
    await spooled.shipped(2)
    spooled.stop()
    assert await _count(db, RequestRecord) == 2
    assert _sample(spooled.metrics, "loragate_records_shipped_total") == 2  # not the refused
    assert spooled.spool.ready() == []


async def test_an_unreachable_database_keeps_records_in_the_spool_until_it_answers(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Scripted outage (the real one, PostgreSQL behind a cut connection, is in the fault tests)."""
    down = {"calls": 0, "until": 3}

    async def flaky(session: AsyncSession, payloads: list[bytes]) -> None:
        down["calls"] += 1
        if down["calls"] <= down["until"]:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        await ship_records(session, payloads)

    spooled = Spooled(tmp_path, sqlite_url, sink=flaky)
    spooled.add(*(FinishedRecord(_row(), None) for _ in range(4)))
    spooled.shipper.start()
    await wait_until(lambda: down["calls"] > 3, timeout_s=30, what="the retries")
    await spooled.shipped(4)
    assert _sample(spooled.metrics, "loragate_record_write_failures_total") == 12
    assert _sample(spooled.metrics, "loragate_records_dropped_total", reason="rejected") == 0
    assert spooled.shipper.last_error is not None
    spooled.stop()
    db = create_engine(sqlite_url)
    try:
        assert await _count(db, RequestRecord) == 4
    finally:
        await db.dispose()


async def test_an_idle_shipper_sleeps_until_a_record(sqlite_url: str, tmp_path: Path) -> None:
    spooled = Spooled(tmp_path, sqlite_url)  # no maintenance: nothing to wake it but a record
    spooled.shipper.start()
    for shipped in (1, 2):
        await wait_until(lambda: spooled.shipper.asleep, what="the shipper asleep, spool empty")
        spooled.add(FinishedRecord(_row(), None))
        await spooled.shipped(shipped)
    await wait_until(lambda: spooled.shipper.asleep, what="the shipper asleep again")
    spooled.stop()  # a stop wakes it too


async def test_stop_ships_what_was_appended_before_it(sqlite_url: str, tmp_path: Path) -> None:
    spooled = Spooled(tmp_path, sqlite_url)
    spooled.shipper.start()
    spooled.add(*(FinishedRecord(_row(), None) for _ in range(30)))
    spooled.stop()  # no wait for a pass: stop's last pass takes them
    assert _sample(spooled.metrics, "loragate_records_shipped_total") == 30


async def test_retention_deletes_old_records_but_not_reviewed_ones(
    db_url: str, db: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    old = [_row(created_at=now - timedelta(days=40)) for _ in range(5)]
    reviewed = _escalated()
    reviewed.row["created_at"] = now - timedelta(days=40)
    recent = [_row(created_at=now - timedelta(days=1)) for _ in range(3)]
    async with session_factory(db).begin() as session:
        await write_records(session, [FinishedRecord(r, None) for r in old + recent] + [reviewed])
    async with session_factory(db).begin() as session:
        assert await prune_records(session, now - timedelta(days=30), 2) == 2
    async with session_factory(db).begin() as session:
        assert await prune_records(session, now - timedelta(days=30), 100) == 3
    async with session_factory(db)() as session:
        left = set((await session.scalars(select(RequestRecord.id))).all())
    assert left == {r["id"] for r in recent} | {reviewed.row["id"]}


async def test_the_shipper_applies_retention(sqlite_url: str, tmp_path: Path) -> None:
    old = _row(created_at=datetime.now(UTC) - timedelta(days=3))
    fresh = _row()
    spooled = Spooled(tmp_path, sqlite_url, maintenance=pruner(2))
    spooled.add(FinishedRecord(old, None), FinishedRecord(fresh, None))
    spooled.shipper.start()
    db = create_engine(sqlite_url)
    try:

        async def only_fresh_left() -> bool:
            async with session_factory(db)() as session:
                ids = set((await session.scalars(select(RequestRecord.id))).all())
            return ids == {fresh["id"]}

        await wait_until(only_fresh_left, timeout_s=30, what="the old record pruned")
    finally:
        spooled.stop()
        await db.dispose()
    assert pruner(0) is None  # 0 keeps records forever


# -- through the gateway -----------------------------------------------------------------------


HOLD = {"escalate": "always", "delivery": "hold"}


async def test_a_held_answer_can_be_read_at_once(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    settings = make_settings(
        db_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, HOLD),
        record_flush_interval_s=3600,
    )  # fmt: skip
    async with running_gateway(settings) as gw:
        r = await gw.client.post(CHAT, json=chat_body(ROUTE), headers=gw.auth())
        assert r.status_code == 202, r.text
        # The shipper would take an hour: the item was committed before the 202.
        result = await gw.client.get(r.json()["result_url"], headers=gw.auth())
        assert result.status_code == 200, result.text
        assert result.json()["status"] == "pending"


async def test_a_held_answer_that_cannot_be_stored_gets_503_and_no_item(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.default = Behaviour(tokens=TOKENS, logprobs=SURE)
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], routes_file=routes_file(tmp_path, HOLD)
    )
    async with running_gateway(settings) as gw:
        keeper = gw.app.state.gateway.records

        async def database_down(session: AsyncSession, records: list[FinishedRecord]) -> None:
            raise OperationalError("INSERT", {}, Exception("connection refused"))

        monkeypatch.setattr(keeper, "_store_now", database_down)
        r = await gw.client.post(CHAT, json=chat_body(ROUTE), headers=gw.auth())
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "review_store_unavailable"
        (record,) = await gw.records(1)
        assert record.status_code == 503 and record.id == r.headers["x-request-id"]
        async with gw.app.state.gateway.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(ReviewItem)) == 0


@pytest.mark.parametrize("policy", ["refuse", "drop"])
async def test_a_full_spool_refuses_or_drops_by_policy(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine, policy: str
) -> None:
    settings = make_settings(
        sqlite_url, tmp_path, [engine.url], spool_max_bytes=4000, records_when_full=policy
    )
    async with running_gateway(settings) as gw:
        recorder = gw.app.state.records
        assert recorder.shipper.stop(30)  # the database is "away": nothing leaves the spool
        statuses = []
        for _ in range(12):
            r = await gw.client.post(CHAT, json=chat_body(), headers=gw.auth())
            statuses.append(r.status_code)
        metrics = gw.app.state.gateway.metrics
        dropped = _sample(metrics, "loragate_records_dropped_total", reason="spool_full")
        assert recorder.spool.full
    first_full = statuses.index(503) if 503 in statuses else len(statuses)
    if policy == "refuse":
        assert 0 < first_full < 12 and set(statuses[first_full:]) == {503}
        assert set(statuses[:first_full]) == {200}
        assert dropped == 12 - first_full  # the refusals' own records
    else:
        assert set(statuses) == {200}
        assert dropped > 0


async def test_two_gateways_on_one_database_each_with_its_own_spool(
    db_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    one = make_settings(db_url, tmp_path / "one", [engine.url])
    two = make_settings(db_url, tmp_path / "two", [engine.url])
    async with running_gateway(one) as a, running_gateway(two) as b:
        ids = set()
        for gw in (a, b, a, b):
            r = await gw.client.post(CHAT, json=chat_body(), headers=gw.auth())
            assert r.status_code == 200
            ids.add(r.headers["x-request-id"])
        rows = await a.records(4, timeout_s=30)
        assert ids <= {row.id for row in rows}
        with pytest.raises(Exception, match="own data directory"):
            async with running_gateway(make_settings(db_url, tmp_path / "one", [engine.url])):
                pass


async def test_readiness_reports_the_records(
    sqlite_url: str, tmp_path: Path, engine: FakeEngine
) -> None:
    """Readiness reports how far records are from the database without failing on it."""
    async with running_gateway(make_settings(sqlite_url, tmp_path, [engine.url])) as gw:
        r = await gw.client.post(CHAT, json=chat_body(), headers=gw.auth(Role.APP))
        assert r.status_code == 200
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        records = ready.json()["checks"]["records"]
        assert set(records) == {"spool_bytes", "oldest_unshipped_s", "last_error"}
        assert records["last_error"] is None
