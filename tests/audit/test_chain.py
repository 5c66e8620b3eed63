"""The audit trail is a hash chain: whoever deletes, edits or inserts events by hand (with the
triggers in place or dropped) is named by ``loragate audit verify``, which passes on an intact
trail, one pruned by the retention job, and one migrated from before the chain existed."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from service.audit.actor import Actor
from service.audit.chain import GENESIS, EventFields, link_hash
from service.audit.events import record_event
from service.audit.retention import audit_pruner
from service.audit.store import verify_chain
from service.auth import Role
from service.db.migrations import upgrade
from service.db.models import ApiKey
from service.db.session import create_engine, is_sqlite, session_factory
from tests.audit.test_audit import events_in
from tests.audit.trail import run_sql, verify, write_events
from tests.conftest import Harness, fresh_database, make_settings, running_gateway
from tests.fake_engine import FakeEngine

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
# The finding's reproduction (the cutoff named by its column: the table has an id first).
WIPE = (
    "INSERT INTO audit_prune_cutoffs (cutoff) VALUES ('9999-12-31')",
    "DELETE FROM audit_events",
)
EVENT_TRIGGERS = {  # the trigger that refuses an UPDATE of an event, and how to drop it
    "sqlite": "DROP TRIGGER IF EXISTS audit_events_no_update",
    "postgresql": "DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events",
}
HEAD_TRIGGERS = {
    "sqlite": "DROP TRIGGER IF EXISTS audit_chain_head_forward",
    "postgresql": "DROP TRIGGER IF EXISTS audit_chain_head_forward ON audit_chain_head",
}


def dialect(url: str) -> str:
    return "sqlite" if is_sqlite(url) else "postgresql"


def minutes(n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(minutes=m) for m in range(n)]


@pytest.fixture
def trail(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database with 11 events written by ``record_event``, the CLI pointed at it."""
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    asyncio.run(write_events(db_url, minutes(11), monkeypatch))
    yield db_url


def broken_at(result_output: str) -> str:
    (line,) = [line for line in result_output.splitlines() if line.startswith("BROKEN")]
    return line


def test_an_intact_trail_verifies(trail: str) -> None:
    events = asyncio.run(events_in(trail))
    assert [e.id for e in events] == list(range(1, 12))
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert len({e.hash for e in events}) == 11 and all(len(e.hash) == 64 for e in events)
    result = verify()
    assert result.exit_code == 0, result.output
    assert "checked 11 events (ids 1..11)" in result.output and "intact" in result.output
    verdict = json.loads(verify("--json").output)
    assert verdict["intact"] is True and verdict["broken"] is None
    assert verdict["head"] == {"last_id": 11, "hash": events[-1].hash}


def test_the_findings_wipe_is_detected(trail: str) -> None:
    asyncio.run(run_sql(trail, *WIPE))
    assert asyncio.run(events_in(trail)) == []  # the triggers let it through: verify must see it
    result = verify()
    assert result.exit_code == 1, result.output
    assert "checked 0 events" in result.output
    assert broken_at(result.output) == (
        "BROKEN at the head: head_mismatch: there are no events, but the head names event 11: "
        "every event was removed"
    )


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("id <= 4", "BROKEN at event 5: prev_hash_mismatch: the oldest event does not follow the "
                    "start of the chain"),
        ("id IN (6, 7)", "BROKEN at event 8: prev_hash_mismatch: its prev_hash is not the hash of "
                         "event 5"),
        ("id >= 10", "BROKEN at the head: head_mismatch: the head names event 11, the newest "
                     "event is 9: the newest events were removed"),
    ],
    ids=["oldest", "middle", "newest"],
)  # fmt: skip
def test_a_deletion_past_a_hand_written_cutoff_is_named(trail: str, where: str, named: str) -> None:
    asyncio.run(run_sql(trail, WIPE[0], f"DELETE FROM audit_events WHERE {where}"))
    result = verify()
    assert result.exit_code == 1, result.output
    assert broken_at(result.output).startswith(named), result.output


def test_an_edit_after_dropping_the_trigger_is_detected(trail: str) -> None:
    asyncio.run(
        run_sql(
            trail, EVENT_TRIGGERS[dialect(trail)],
            "UPDATE audit_events SET actor = 'someone else' WHERE id = 3",
        )
    )  # fmt: skip
    result = verify()
    assert result.exit_code == 1, result.output
    assert "checked 11 events" in result.output
    assert broken_at(result.output).startswith("BROKEN at event 3: hash_mismatch: its fields")


def test_an_event_inserted_by_hand_is_detected(trail: str) -> None:
    # A forged event between 4 and 5 that even links to 4 (ids have no gaps: it takes a free one).
    asyncio.run(run_sql(trail, WIPE[0], "DELETE FROM audit_events WHERE id = 5"))
    events = asyncio.run(events_in(trail))
    four = events[3]
    forged = EventFields(5, T0, "cli", None, "mallory", "key.create", "key:x", None, None, None,
                         None)  # fmt: skip
    digest = link_hash(four.hash, forged)
    at = T0.replace(tzinfo=None).isoformat(sep=" ")  # read back as T0 on either database
    asyncio.run(
        run_sql(
            trail,
            "INSERT INTO audit_events (id, at, actor, os_user, action, object, prev_hash, hash) "
            f"VALUES (5, '{at}', 'cli', 'mallory', 'key.create', 'key:x', '{four.hash}', "
            f"'{digest}')",
        )
    )
    result = verify()
    assert result.exit_code == 1, result.output
    assert broken_at(result.output).startswith("BROKEN at event 6: prev_hash_mismatch")


async def rewrite_from(url: str, first: int, key: bytes = b"") -> None:
    """What someone with database access (and ``key``, if given) can do: drop the triggers,
    edit event ``first``, recompute every later link and move the head along."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(EVENT_TRIGGERS[dialect(url)]))
            await connection.execute(text(HEAD_TRIGGERS[dialect(url)]))
            await connection.execute(
                text("UPDATE audit_events SET actor = 'someone else' WHERE id = :id"), {"id": first}
            )
        events = await events_in(url)
        prev = events[first - 2].hash if first > 1 else GENESIS
        async with engine.begin() as connection:
            for e in events[first - 1 :]:
                fields = EventFields(
                    e.id, e.at, e.actor, e.actor_role, e.os_user, e.action, e.object, e.before,
                    e.after, e.request_id, e.client,
                )  # fmt: skip
                digest = link_hash(prev, fields, key)
                await connection.execute(
                    text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE id = :id"),
                    {"p": prev, "h": digest, "id": e.id},
                )
                prev = digest
            await connection.execute(text("UPDATE audit_chain_head SET hash = :h"), {"h": prev})
    finally:
        await engine.dispose()


def test_with_a_signing_key_a_consistent_rewrite_is_still_detected(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "a-key-kept-out-of-the-database"
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    # Two events from before the key was set, then five signed ones.
    asyncio.run(write_events(db_url, minutes(2), monkeypatch))
    asyncio.run(write_events(db_url, minutes(5, T0 + timedelta(hours=1)), monkeypatch, key=key))
    # Without the key the signed events do not verify; with another key neither do they.
    unkeyed = verify()
    assert unkeyed.exit_code == 1 and "BROKEN at event 3: hash_mismatch" in unkeyed.output
    monkeypatch.setenv("LORAGATE_AUDIT_SIGNING_KEY", "another key")
    assert "BROKEN at event 3: hash_mismatch" in verify().output
    monkeypatch.setenv("LORAGATE_AUDIT_SIGNING_KEY", key)
    intact = verify()
    assert intact.exit_code == 0 and "HMAC-SHA256" in intact.output, intact.output

    # An unsigned event edited: relinking the signed ones after it takes the key, and relinked
    # with SHA-256 the trail ends unsigned.
    asyncio.run(rewrite_from(db_url, 2))
    rewritten = verify()
    assert rewritten.exit_code == 1
    assert broken_at(rewritten.output).startswith("BROKEN at event 7: unsigned")
    # The limit, stated in the README: without a key such a rewrite cannot be told apart.
    monkeypatch.delenv("LORAGATE_AUDIT_SIGNING_KEY")
    assert verify().exit_code == 0
    # ... and whoever holds the key can rewrite a signed trail too.
    asyncio.run(rewrite_from(db_url, 4, key.encode()))
    monkeypatch.setenv("LORAGATE_AUDIT_SIGNING_KEY", key)
    assert verify().exit_code == 0


def test_a_key_set_over_an_unsigned_trail_wants_a_signed_event(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    asyncio.run(write_events(db_url, minutes(3), monkeypatch))
    monkeypatch.setenv("LORAGATE_AUDIT_SIGNING_KEY", "k")
    result = verify()
    assert result.exit_code == 1 and "BROKEN at event 3: unsigned" in result.output
    asyncio.run(write_events(db_url, minutes(1, T0 + timedelta(hours=1)), monkeypatch, key="k"))
    assert verify().exit_code == 0


def test_pruning_through_the_retention_job_verifies_clean(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAGATE_DATABASE_URL", db_url)
    monkeypatch.setenv("LORAGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAGATE_AUDIT_SIGNING_KEY", "k")
    now = datetime.now(UTC)
    old = minutes(4, now - timedelta(days=60))
    older_than_10_days = minutes(3, now - timedelta(days=20))
    asyncio.run(write_events(db_url, old + older_than_10_days + minutes(2, now), monkeypatch,
                             key="k"))  # fmt: skip
    before = asyncio.run(events_in(db_url))

    async def prune(days: float) -> None:
        job = audit_pruner(days, "k")
        assert job is not None
        engine = create_engine(db_url)
        try:
            await job(session_factory(engine))  # the shipper's sessions: no key of their own
        finally:
            await engine.dispose()

    asyncio.run(prune(30))
    events = asyncio.run(events_in(db_url))
    assert [e.id for e in events] == [5, 6, 7, 8, 9, 10]
    prune_event = events[-1]
    assert (prune_event.action, prune_event.actor) == ("audit.prune", "retention")
    assert prune_event.after is not None
    assert prune_event.after["removed"] == 4 and prune_event.after["through_id"] == 4
    assert prune_event.after["through_hash"] == before[3].hash == events[0].prev_hash
    result = verify()
    assert result.exit_code == 0 and "checked 6 events (ids 5..10)" in result.output, result.output

    # A second prune: the walk starts from what the newest prune event records.
    asyncio.run(prune(10))
    events = asyncio.run(events_in(db_url))
    assert [e.id for e in events] == [8, 9, 10, 11] and events[-1].after is not None
    assert events[-1].after["through_id"] == 7
    assert verify().exit_code == 0
    # Nothing older than the retention: no prune, no event.
    asyncio.run(prune(10))
    assert len(asyncio.run(events_in(db_url))) == 4

    # Removing the oldest remaining one by hand is not a prune.
    asyncio.run(run_sql(db_url, WIPE[0], "DELETE FROM audit_events WHERE id = 8"))
    result = verify()
    assert result.exit_code == 1
    assert broken_at(result.output).startswith(
        "BROKEN at event 9: prev_hash_mismatch: the oldest event does not follow event 7, the "
        "last one the retention job removed (audit.prune event 11)"
    )


def test_the_chain_head_only_moves_forward(trail: str) -> None:
    for statement in (
        "UPDATE audit_chain_head SET last_id = 9",
        "UPDATE audit_chain_head SET hash = 'x'",
        "DELETE FROM audit_chain_head",
        "INSERT INTO audit_chain_head (id, last_id, hash) VALUES (2, 0, 'x')",
    ):
        with pytest.raises((DBAPIError, IntegrityError)):
            asyncio.run(run_sql(trail, statement))
    if dialect(trail) == "postgresql":
        with pytest.raises(DBAPIError, match="only moves forward"):
            asyncio.run(run_sql(trail, "TRUNCATE audit_chain_head"))
    assert verify().exit_code == 0


async def test_concurrent_audited_changes_form_one_chain(db_url: str) -> None:
    """20 changes at once, each with its event in its transaction: one unbroken chain, and every
    verify run meanwhile sees an intact one (it reads one snapshot)."""
    engine = create_engine(db_url)
    sessions = session_factory(engine)

    async def change(n: int) -> int:
        async with sessions.begin() as session:
            session.add(ApiKey(id=f"k{n}", name=f"k{n}", role="app", secret_hash="h",
                               created_at=datetime.now(UTC)))  # fmt: skip
            await session.flush()
            await asyncio.sleep(0.01 * (n % 3))  # the transactions overlap
            event_id = await record_event(session, Actor(f"k{n}", "admin"), "key.create",
                                          f"key:k{n}")  # fmt: skip
            await asyncio.sleep(0.01)  # hold the head a while before committing
            return event_id

    async def verify_meanwhile() -> list[bool]:
        verdicts = []
        for _ in range(5):
            async with sessions() as session:
                verdicts.append((await verify_chain(session)).intact)
            await asyncio.sleep(0.02)
        return verdicts

    try:
        *ids, meanwhile = await asyncio.gather(*(change(n) for n in range(20)), verify_meanwhile())
        async with sessions() as session:
            verdict = await verify_chain(session)
    finally:
        await engine.dispose()
    assert sorted(ids) == list(range(1, 21))
    assert meanwhile == [True] * 5
    assert verdict.intact and verdict.checked == 20 and verdict.head is not None
    assert verdict.head.last_id == 20
    events = await events_in(db_url)
    assert [e.id for e in events] == list(range(1, 21))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert {e.object for e in events} == {f"key:k{n}" for n in range(20)}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_events_from_before_the_migration_are_chained(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path, migrate=False) as url:
        await asyncio.to_thread(upgrade, url, "0014")
        for n in range(3):
            await run_sql(
                url,
                "INSERT INTO audit_events (at, actor, action, object, after) VALUES "
                f"('2026-01-0{n + 1} 10:00:00.5', 'cli', 'key.create', 'key:{n}', "
                f'\'{{"n": {n}, "x": [1.5, null]}}\')',
            )
        await asyncio.to_thread(upgrade, url)
        engine = create_engine(url)
        sessions = session_factory(engine)
        try:
            async with sessions() as session:
                verdict = await verify_chain(session)
            assert verdict.intact and verdict.checked == 3, verdict
            assert verdict.head is not None and verdict.head.last_id == 3
            async with sessions.begin() as session:
                assert await record_event(session, Actor("cli", None), "key.revoke", "key:0") == 4
            async with sessions() as session:
                assert (await verify_chain(session)).intact
        finally:
            await engine.dispose()
        await run_sql(url, "INSERT INTO audit_prune_cutoffs (cutoff) VALUES ('9999-12-31')",
                      "DELETE FROM audit_events WHERE id = 2")  # fmt: skip
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                verdict = await verify_chain(session)
        finally:
            await engine.dispose()
        assert verdict.broken is not None and verdict.broken.event_id == 3


@pytest.fixture
async def harness(db_url: str, tmp_path: Path, engine: FakeEngine) -> AsyncIterator[Harness]:
    async with running_gateway(make_settings(db_url, tmp_path, [engine.url])) as h:
        yield h


async def test_the_api_verifies_the_chain(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    url = "/v1/admin/audit/verify"
    await write_events(h.url, minutes(3), monkeypatch)
    intact = (await h.client.get(url, headers=h.auth(Role.SRE))).json()
    assert intact["intact"] is True and intact["checked"] == 3 and intact["broken"] is None
    page = (await h.client.get("/v1/admin/audit", headers=h.auth(Role.SRE))).json()
    assert page["data"][0]["hash"] == intact["head"]["hash"]
    assert page["data"][0]["prev_hash"] == page["data"][1]["hash"]
    assert (await h.client.get(url, headers=h.auth(Role.REVIEWER))).status_code == 403
    await run_sql(h.url, *WIPE)
    broken = (await h.client.get(url, headers=h.auth(Role.ADMIN))).json()
    assert broken["intact"] is False and broken["checked"] == 0
    assert broken["broken"]["event_id"] is None and broken["broken"]["problem"] == "head_mismatch"
