"""The review queue's storage: claim order, leases and fencing tokens, decisions, audit trail.

Every test runs on SQLite and on PostgreSQL (the ``db_url`` fixture).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import RequestRecord, ReviewDecision, ReviewItem, ReviewVote
from service.db.session import create_engine, session_factory
from service.review import claims, decisions, model, queue, reads
from service.review.model import (
    AlreadyDecided,
    DecisionKind,
    InvalidDecision,
    ItemNotFound,
    ItemState,
    StaleClaim,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LEASE_S = 300.0

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


async def add(
    sessions: Sessions, n: int = 1, *, route: str = "triage", reason: str = "low_confidence",
    priority: int = 0, start: float = 0.0,
) -> list[str]:  # fmt: skip
    ids = []
    async with sessions.begin() as session:
        for i in range(n):
            item_id = await queue.enqueue(
                session,
                queue.NewItem(
                    request_id=f"req-{route}-{start + i}",
                    route=route,
                    target="m@1",
                    reason=reason,
                    answer='{"category": "billing"}',
                    created_at=at(start + i),
                    priority=priority,
                    request_body='{"messages": []}',
                    confidence=0.4,
                    field_confidence={"category": 0.4},
                    schema_errors=None,
                ),
            )
            ids.append(item_id)
    return ids


async def test_enqueue_joins_the_callers_transaction(sessions: Sessions) -> None:
    record = {
        "id": "req-1", "created_at": NOW, "endpoint": "chat", "route": "triage", "arm": "stable",
        "stream": False, "status_code": 200, "latency_ms": 12.0, "attempts": 1,
    }  # fmt: skip
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            session.add(RequestRecord(**record))
            await queue.enqueue(
                session,
                queue.NewItem(
                    request_id="req-1",
                    route="triage",
                    target="m@1",
                    reason="invalid",
                    answer="{}",
                    created_at=NOW,
                    schema_errors=[{"path": "$", "message": "bad"}],
                ),
            )
            await session.flush()
            raise RuntimeError("the request failed after the writes")
    async with sessions() as session:
        assert await reads.list_items(session) == []
        assert await session.scalar(select(func.count()).select_from(RequestRecord)) == 0
    async with sessions.begin() as session:
        session.add(RequestRecord(**record))
        item_id = await queue.enqueue(
            session,
            queue.NewItem(
                request_id="req-1",
                route="triage",
                target="m@1",
                reason="invalid",
                answer="{}",
                created_at=NOW,
                schema_errors=[{"path": "$", "message": "bad"}],
            ),
        )
    async with sessions() as session:
        item = await reads.get(session, item_id)
        assert (item.state, item.claim_token, item.expiries) == (ItemState.PENDING, 0, 0)
        assert item.schema_errors == [{"path": "$", "message": "bad"}]
        assert item.created_at == NOW
        with pytest.raises(ItemNotFound):
            await reads.get(session, "nope")


async def test_claims_the_highest_priority_then_the_oldest(sessions: Sessions) -> None:
    low = await add(sessions, 2, priority=0, start=0)
    high = await add(sessions, 2, priority=5, start=10)
    mid = await add(sessions, 1, priority=1, start=-100)
    order = []
    while (claimed := await claims.claim_next(sessions, "rev", at(60), LEASE_S)) is not None:
        assert claimed.token == claimed.item.claim_token == 1
        assert claimed.item.state is ItemState.CLAIMED
        assert claimed.item.claimed_by == "rev"
        assert claimed.lease_until == claimed.item.lease_until == at(60 + LEASE_S)
        order.append(claimed.item.id)
    assert order == high + mid + low
    async with sessions() as session:
        listed = await reads.list_items(session)
        assert [i.id for i in listed] == high + mid + low
        assert [i.id for i in await reads.list_items(session, limit=2, offset=1)] == [
            high[1], mid[0]
        ]  # fmt: skip


async def test_an_item_another_writer_holds_for_a_moment_is_claimed_not_skipped(
    sessions: Sessions,
) -> None:
    """The SLA loop stamps overdue items in a transaction of its own. A claim that comes while
    it holds the only pending item waits for it; on PostgreSQL, SKIP LOCKED used to skip the
    held row and answer "nothing to claim" (seen in CI as a 204 with an item pending)."""
    (item_id,) = await add(sessions)
    async with sessions() as holder, holder.begin():
        await holder.execute(
            update(ReviewItem)
            .where(ReviewItem.id == item_id)
            .values(sla_breached_at=at(1))
            .execution_options(synchronize_session=False)
        )
        claim = asyncio.create_task(claims.claim_next(sessions, "rev", at(60), LEASE_S))
        done, _ = await asyncio.wait([claim], timeout=0.2)  # the claim meets the held row
        assert not done or claim.result() is not None, "nothing claimed while it was held"
    claimed = await asyncio.wait_for(claim, timeout=30)
    assert claimed is not None and claimed.item.id == item_id


async def test_claim_filters_by_route_and_reason(sessions: Sessions) -> None:
    triage = await add(sessions, 2, route="triage", reason="invalid")
    sample = await add(sessions, 1, route="triage", reason="sample", priority=9, start=5)
    summary = await add(sessions, 1, route="summary", reason="invalid", priority=9, start=6)
    got = await claims.claim_next(sessions, "rev", NOW, LEASE_S, route="triage", reason="invalid")
    assert got is not None and got.item.id == triage[0]
    got = await claims.claim_next(sessions, "rev", NOW, LEASE_S, route="summary")
    assert got is not None and got.item.id == summary[0]
    assert await claims.claim_next(sessions, "rev", NOW, LEASE_S, route="summary") is None
    got = await claims.claim_next(sessions, "rev", NOW, LEASE_S, reason="sample")
    assert got is not None and got.item.id == sample[0]
    got = await claims.claim_next(sessions, "rev", NOW, LEASE_S)
    assert got is not None and got.item.id == triage[1]
    assert await claims.claim_next(sessions, "rev", NOW, LEASE_S) is None
    async with sessions() as session:
        claimed = await reads.list_items(session, state="claimed", route="triage")
        assert {i.id for i in claimed} == {*triage, *sample}
        assert [i.id for i in await reads.list_items(session, reason="sample")] == sample


async def test_an_expired_lease_returns_the_item_and_fences_the_old_token(
    sessions: Sessions,
) -> None:
    [item_id] = await add(sessions)
    first = await claims.claim_next(sessions, "alice", NOW, 60)
    assert first is not None and first.token == 1
    # While alice's lease runs, nobody else gets the item.
    assert await claims.claim_next(sessions, "bob", at(59), 60) is None
    # Exactly at the lease's end it is still hers; a moment later it is claimable again.
    assert await claims.claim_next(sessions, "bob", at(60), 60) is None
    second = await claims.claim_next(sessions, "bob", at(61), 60)
    assert second is not None and second.item.id == item_id
    assert second.token == 2 and second.item.expiries == 1 and second.item.claimed_by == "bob"
    with pytest.raises(StaleClaim):
        await decisions.decide(sessions, item_id, 1, "alice", "approve", None, at(62))
    with pytest.raises(StaleClaim):  # the old token, even sent as bob
        await decisions.decide(sessions, item_id, 1, "bob", "approve", None, at(62))
    decision = await decisions.decide(sessions, item_id, 2, "bob", "correct", '{"a": 1}', at(63))
    assert decision.kind is DecisionKind.CORRECT and decision.token == 2
    with pytest.raises(StaleClaim):  # after the decision, the old token is still stale
        await decisions.decide(sessions, item_id, 1, "alice", "approve", None, at(64))
    async with sessions() as session:
        item = await reads.get(session, item_id)
        assert item.state is ItemState.CORRECTED and item.corrected_answer == '{"a": 1}'
        assert (item.decided_by, item.decided_at, item.claim_token) == ("bob", at(63), 2)
        kinds = [(h.kind, h.reviewer, h.claim_token) for h in await reads.history(session, item_id)]
        assert kinds == [("expired", "alice", 1), ("correct", "bob", 2)]


async def test_a_decision_after_the_lease_ran_out_is_refused(sessions: Sessions) -> None:
    [item_id] = await add(sessions)
    claimed = await claims.claim_next(sessions, "alice", NOW, 60)
    assert claimed is not None
    # Nobody else claimed it, but the lease is over: the decision is refused all the same.
    with pytest.raises(StaleClaim):
        await decisions.decide(sessions, item_id, claimed.token, "alice", "approve", None, at(61))
    decided = await decisions.decide(
        sessions, item_id, claimed.token, "alice", "approve", None, at(60)
    )
    assert decided.at == at(60)


async def test_heartbeat_extends_a_live_lease_and_refuses_a_stale_token(
    sessions: Sessions,
) -> None:
    [item_id] = await add(sessions)
    claimed = await claims.claim_next(sessions, "alice", NOW, 60)
    assert claimed is not None
    assert await claims.heartbeat(sessions, item_id, 1, "alice", at(50), 60) == at(110)
    # Past the first lease's end, the extended lease still holds.
    assert await claims.claim_next(sessions, "bob", at(100), 60) is None
    await decisions.decide(sessions, item_id, 1, "alice", "approve", None, at(105))
    [other] = await add(sessions, start=1)
    claimed = await claims.claim_next(sessions, "alice", NOW, 60)
    assert claimed is not None and claimed.item.id == other
    for token, reviewer in ((0, "alice"), (2, "alice"), (1, "bob")):
        with pytest.raises(StaleClaim):
            await claims.heartbeat(sessions, other, token, reviewer, at(10), 60)
    with pytest.raises(StaleClaim):  # too late: the lease ran out
        await claims.heartbeat(sessions, other, 1, "alice", at(61), 60)
    taken = await claims.claim_next(sessions, "bob", at(62), 60)
    assert taken is not None and taken.token == 2
    with pytest.raises(StaleClaim):
        await claims.heartbeat(sessions, other, 1, "alice", at(63), 60)
    with pytest.raises(ItemNotFound):
        await claims.heartbeat(sessions, "nope", 1, "alice", at(63), 60)
    with pytest.raises(StaleClaim):  # a decided item has no lease left to extend
        await claims.heartbeat(sessions, item_id, 1, "alice", at(106), 60)


async def test_an_item_is_parked_after_too_many_expiries(sessions: Sessions) -> None:
    [item_id] = await add(sessions, priority=1)
    [other] = await add(sessions, start=1)
    t = 0.0
    for n in (1, 2):
        claimed = await claims.claim_next(sessions, f"rev{n}", at(t), 10, max_expiries=3)
        assert claimed is not None and claimed.item.id == item_id
        assert claimed.token == n and claimed.item.expiries == n - 1
        t += 11
    claimed = await claims.claim_next(sessions, "rev3", at(t), 10, max_expiries=3)
    assert claimed is not None and claimed.item.id == item_id and claimed.item.expiries == 2
    t += 11
    # The third expiry parks it: the next claim gets the other item instead.
    nxt = await claims.claim_next(sessions, "rev4", at(t), 10, max_expiries=3)
    assert nxt is not None and nxt.item.id == other
    async with sessions() as session:
        item = await reads.get(session, item_id)
        assert item.state is ItemState.PARKED and item.expiries == 3
        assert item.claimed_by is None and item.lease_until is None and item.claim_token == 3
        kinds = [(h.kind, h.reviewer, h.claim_token) for h in await reads.history(session, item_id)]
        assert kinds == [
            ("expired", "rev1", 1), ("expired", "rev2", 2), ("expired", "rev3", 3),
            ("parked", "rev3", 3),
        ]  # fmt: skip
        stats = await reads.queue_stats(session, at(t))
        assert stats.parked == 1
        assert [i.id for i in await reads.list_items(session, state="parked")] == [item_id]
    with pytest.raises(StaleClaim):
        await decisions.decide(sessions, item_id, 3, "rev3", "approve", None, at(t))


async def test_release_expired_on_its_own(sessions: Sessions) -> None:
    ids = await add(sessions, 2)
    for _ in ids:
        assert await claims.claim_next(sessions, "rev", NOW, 10) is not None
    assert await claims.release_expired(sessions, at(5)) == 0
    assert await claims.release_expired(sessions, at(11), max_expiries=1) == 2
    async with sessions() as session:
        assert [i.state for i in await reads.list_items(session)] == [ItemState.PARKED] * 2
        assert (await reads.queue_stats(session, at(11))).parked == 2


async def test_decisions_are_idempotent_and_final(sessions: Sessions) -> None:
    a, b, c = await add(sessions, 3)
    tokens = {}
    for _ in range(3):
        got = await claims.claim_next(sessions, "alice", NOW, LEASE_S)
        assert got is not None
        tokens[got.item.id] = got.token
    first = await decisions.decide(sessions, a, tokens[a], "alice", "approve", None, at(1))
    # The same decision again (a retried request): the recorded one, no second history row.
    assert await decisions.decide(sessions, a, tokens[a], "alice", "approve", None, at(2)) == first
    assert first.at == at(1)
    with pytest.raises(AlreadyDecided):
        await decisions.decide(sessions, a, tokens[a], "alice", "reject", "spam", at(3))
    with pytest.raises(AlreadyDecided):
        await decisions.decide(sessions, a, tokens[a], "bob", "approve", None, at(3))
    fix = await decisions.decide(sessions, b, tokens[b], "alice", "correct", '{"x": 1}', at(4))
    assert (
        await decisions.decide(sessions, b, tokens[b], "alice", "correct", '{"x": 1}', at(5)) == fix
    )
    with pytest.raises(AlreadyDecided):  # another correction is another decision
        await decisions.decide(sessions, b, tokens[b], "alice", "correct", '{"x": 2}', at(5))
    no = await decisions.decide(sessions, c, tokens[c], "alice", DecisionKind.REJECT, "spam", at(6))
    assert (no.kind, no.reject_reason, no.corrected_answer) == (DecisionKind.REJECT, "spam", None)
    assert await decisions.decide(sessions, c, tokens[c], "alice", "reject", "spam", at(9)) == no
    with pytest.raises(AlreadyDecided):
        await decisions.decide(sessions, c, tokens[c], "alice", "reject", "other", at(9))
    with pytest.raises(ItemNotFound):
        await decisions.decide(sessions, "nope", 1, "alice", "approve", None, at(9))
    async with sessions() as session:
        for item_id, kind in ((a, "approve"), (b, "correct"), (c, "reject")):
            assert [h.kind for h in await reads.history(session, item_id)] == [kind]
        assert (await reads.get(session, c)).state is ItemState.REJECTED


async def test_a_decision_needs_what_its_kind_needs(sessions: Sessions) -> None:
    [item_id] = await add(sessions)
    claimed = await claims.claim_next(sessions, "alice", NOW, LEASE_S)
    assert claimed is not None
    for kind, payload in (("reject", None), ("reject", "  "), ("correct", None),
                          ("correct", ""), ("approve", "why")):  # fmt: skip
        with pytest.raises(InvalidDecision):
            await decisions.decide(sessions, item_id, claimed.token, "alice", kind, payload, at(1))
    with pytest.raises(ValueError):
        await decisions.decide(sessions, item_id, claimed.token, "alice", "maybe", None, at(1))
    async with sessions() as session:
        assert (await reads.get(session, item_id)).state is ItemState.CLAIMED
        assert await reads.history(session, item_id) == []
    await decisions.decide(sessions, item_id, claimed.token, "alice", "reject", "off topic", at(2))
    async with sessions() as session:
        [entry] = await reads.history(session, item_id)
        assert (entry.kind, entry.payload, entry.at) == ("reject", {"reason": "off topic"}, at(2))


async def test_the_history_is_append_only_and_complete(sessions: Sessions) -> None:
    [item_id] = await add(sessions)
    snapshots: list[list[model.HistoryEntry]] = []

    async def snapshot() -> None:
        async with sessions() as session:
            snapshots.append(await reads.history(session, item_id))

    t = 0.0
    for reviewer in ("r1", "r2"):  # two leases run out
        assert await claims.claim_next(sessions, reviewer, at(t), 10) is not None
        t += 11
        await snapshot()
    claimed = await claims.claim_next(sessions, "r3", at(t), 10)
    assert claimed is not None and claimed.token == 3
    await snapshot()
    await decisions.decide(sessions, item_id, 3, "r3", "correct", '{"ok": true}', at(t + 1))
    await snapshot()
    await decisions.decide(sessions, item_id, 3, "r3", "correct", '{"ok": true}', at(t + 2))
    await snapshot()
    # Every snapshot extends the one before it: nothing was ever edited or removed.
    for before, after in itertools.pairwise(snapshots):
        assert after[: len(before)] == before
    final = snapshots[-1]
    assert [(h.kind, h.reviewer, h.claim_token) for h in final] == [
        ("expired", "r1", 1), ("expired", "r2", 2), ("correct", "r3", 3)
    ]  # fmt: skip
    assert final[-1].payload == {"corrected_answer": '{"ok": true}'}
    assert final[0].payload == {"lease_until": at(10).isoformat(), "expiries": 1}
    # The database itself refuses a second decision row for an item.
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(
                ReviewDecision(
                    item_id=item_id, at=at(99), reviewer="x", kind="approve", claim_token=3,
                    payload={},
                )
            )  # fmt: skip


async def test_queue_stats(sessions: Sessions) -> None:
    async with sessions() as session:
        empty = await reads.queue_stats(session, NOW)
    assert (empty.depth, empty.claimed, empty.oldest_pending_age_s, empty.parked) == (
        {},
        {},
        None,
        0,
    )
    await add(sessions, 3, route="triage", start=0)
    await add(sessions, 2, route="summary", start=100)
    first = await claims.claim_next(sessions, "rev", at(200), 60)  # the oldest triage item
    assert first is not None
    second = await claims.claim_next(sessions, "rev", at(200), 60)
    assert second is not None
    await decisions.decide(sessions, second.item.id, second.token, "rev", "approve", None, at(201))
    async with sessions() as session:
        stats = await reads.queue_stats(session, at(250))
        assert stats.depth == {"triage": 2, "summary": 2}
        assert stats.claimed == {"triage": 1}
        assert stats.oldest_pending_age_s == 248.0  # the third triage item, made at +2 s
        # Once the lease has run out, the claimed item counts as waiting again.
        late = await reads.queue_stats(session, at(300))
        assert late.claimed == {} and late.oldest_pending_age_s == 300.0


async def test_naive_times_are_refused(sessions: Sessions) -> None:
    with pytest.raises(ValueError):
        await claims.claim_next(sessions, "rev", datetime(2026, 1, 1), LEASE_S)


# The concurrency test the issue asks for.

REVIEWERS = 8
ITEMS = 500
KINDS: list[tuple[str, str | None]] = [("approve", None), ("correct", '{"c": 1}'),
                                      ("reject", "wrong")]  # fmt: skip
DECISION_KINDS = {"approve", "correct", "reject"}


@pytest.mark.heavy
async def test_eight_reviewers_drain_five_hundred_items_each_exactly_once(
    db_url: str, sessions: Sessions
) -> None:
    started = time.perf_counter()
    async with sessions.begin() as session:
        for i in range(ITEMS):
            await queue.enqueue(
                session,
                queue.NewItem(
                    request_id=f"req-{i}",
                    route=("triage", "summary")[i % 2],
                    target="m@1",
                    reason="low_confidence",
                    answer="{}",
                    created_at=at(i / 100),
                    priority=i % 4,
                ),
            )
    # A slow reviewer claims the first item with a short lease and goes quiet; the drain runs
    # after that lease ran out, so one of the eight takes the item over (token 2).
    slow = await claims.claim_next(sessions, "slow", NOW, 30)
    assert slow is not None and slow.token == 1
    drain_now = at(3600)  # later than the slow lease; the drain's leases (1 h) never run out

    held: set[str] = set()  # items someone holds right now (the slow claim has run out)
    handed: Counter[str] = Counter()
    decided: dict[str, str] = {}
    taken_over = asyncio.Event()  # one of the eight claimed the slow reviewer's item
    stale_refused = asyncio.Event()

    async def reviewer(n: int) -> int:
        name = f"rev{n}"
        engine = create_engine(db_url)  # its own engine: its own connections
        try:
            mine = session_factory(engine)
            done = 0
            while (got := await claims.claim_next(mine, name, drain_now, 3600)) is not None:
                item_id = got.item.id
                assert item_id not in held, f"{item_id} claimed while {name} held it elsewhere"
                held.add(item_id)
                handed[item_id] += 1
                if item_id == slow.item.id:
                    taken_over.set()
                await asyncio.sleep(0)  # let the others interleave while this one holds it
                kind, payload = KINDS[int(item_id, 16) % 3]
                decision = await decisions.decide(
                    mine, item_id, got.token, name, kind, payload, drain_now
                )
                assert decision.token == got.token
                held.discard(item_id)
                assert item_id not in decided
                decided[item_id] = name
                done += 1
            return done
        finally:
            await engine.dispose()

    async def stale_decider() -> None:
        """The slow reviewer answers once another has taken its item over: its token loses."""
        engine = create_engine(db_url)
        try:
            mine = session_factory(engine)
            async with asyncio.timeout(30):
                await taken_over.wait()
            with pytest.raises(StaleClaim):
                await decisions.decide(
                    mine, slow.item.id, slow.token, "slow", "approve", None, drain_now
                )
            stale_refused.set()
        finally:
            await engine.dispose()

    async with asyncio.TaskGroup() as group:  # a failure in one cancels the others
        group.create_task(stale_decider())
        tasks = [group.create_task(reviewer(n)) for n in range(REVIEWERS)]
    per_reviewer = [task.result() for task in tasks]
    elapsed = time.perf_counter() - started
    assert stale_refused.is_set()
    assert sum(per_reviewer) == ITEMS
    assert sum(1 for d in per_reviewer if d) >= 2, per_reviewer
    assert len(decided) == ITEMS and not held
    assert set(handed.values()) == {1}  # nobody got an item twice
    with pytest.raises(StaleClaim):  # and after the drain, the old token is still refused
        await decisions.decide(sessions, slow.item.id, 1, "slow", "approve", None, drain_now)
    async with sessions() as session:
        states = Counter((await session.scalars(select(ReviewItem.state))).all())
        assert sum(states[s] for s in ("approved", "corrected", "rejected")) == ITEMS
        rows = (await session.execute(select(ReviewDecision.item_id, ReviewDecision.kind))).all()
        decided_ids = [item for item, kind in rows if kind in DECISION_KINDS]
        assert len(decided_ids) == ITEMS and len(set(decided_ids)) == ITEMS
        assert [(item, kind) for item, kind in rows if kind not in DECISION_KINDS] == [
            (slow.item.id, "expired")
        ]
        again = await reads.get(session, slow.item.id)
        assert again.claim_token == 2 and again.decided_by != "slow"
        tokens = (await session.scalars(select(ReviewItem.claim_token))).all()
        assert Counter(tokens) == {1: ITEMS - 1, 2: 1}
    print(f"\n{db_url.split(':')[0]}: {ITEMS} items, {REVIEWERS} reviewers, "
          f"{elapsed:.1f}s, per reviewer {per_reviewer}")  # fmt: skip


@pytest.mark.heavy
async def test_eight_reviewers_give_five_hundred_critical_items_two_decisions_each(
    db_url: str, sessions: Sessions
) -> None:
    """Critical items need two distinct reviewers: none is decided by fewer, none by the same
    reviewer twice. Reviewers agree on most items; where they disagree an adjudicator decides."""
    async with sessions.begin() as session:
        for i in range(ITEMS):
            await queue.enqueue(
                session,
                queue.NewItem(
                    request_id=f"req-{i}", route=("triage", "summary")[i % 2], target="m@1",
                    reason="always", answer="{}", created_at=at(i / 100), priority=i % 4,
                    risk="critical", reviews_needed=2,
                ),
            )  # fmt: skip
    now = at(3600)
    handed: Counter[tuple[str, str]] = Counter()  # (item, reviewer)
    finished: set[str] = set()  # decided or disputed: no more votes wanted
    outcomes: Counter[str] = Counter()

    def kind_of(item_id: str, n: int) -> tuple[str, str | None]:
        # Every tenth item: reviewers of odd and even number disagree.
        if int(item_id, 16) % 10 == 0:
            return KINDS[n % 2]
        return KINDS[int(item_id, 16) % 3]

    async def reviewer(n: int) -> int:
        name = f"rev{n}"
        engine = create_engine(db_url)
        try:
            mine = session_factory(engine)
            done = 0
            while len(finished) < ITEMS:
                got = await claims.claim_next(mine, name, now, 3600)
                if got is None:  # what is left waits for someone else's second decision
                    await asyncio.sleep(0.02)
                    continue
                item_id = got.item.id
                handed[(item_id, name)] += 1
                await asyncio.sleep(0)
                kind, payload = kind_of(item_id, n)
                decision = await decisions.decide(
                    mine, item_id, got.token, name, kind, payload, now
                )
                outcomes[decision.outcome.value] += 1
                if decision.outcome is not model.Outcome.VOTED:
                    finished.add(item_id)
                done += 1
            return done
        finally:
            await engine.dispose()

    async with asyncio.timeout(900), asyncio.TaskGroup() as group:  # a hang fails, not stalls
        tasks = [group.create_task(reviewer(n)) for n in range(REVIEWERS)]
    assert sum(task.result() for task in tasks) == 2 * ITEMS
    assert set(handed.values()) == {1}  # nobody claimed an item twice
    assert outcomes["voted"] == ITEMS and outcomes["decided"] + outcomes["disputed"] == ITEMS
    adjudicated = 0
    while (
        got := await claims.claim_next(sessions, "lead", now, 3600, adjudicator=True)
    ) is not None:
        await decisions.decide(sessions, got.item.id, got.token, "lead", "approve", None, now)
        adjudicated += 1
    assert adjudicated == outcomes["disputed"]
    async with sessions() as session:
        rows = (
            await session.execute(
                select(ReviewVote.item_id, ReviewVote.reviewer).order_by(ReviewVote.seq)
            )
        ).all()
        voters: dict[str, list[str]] = {}
        for item_id, name in rows:
            voters.setdefault(item_id, []).append(name)
        assert len(voters) == ITEMS
        assert all(len(v) == 2 and len(set(v)) == 2 for v in voters.values())
        items = (await session.scalars(select(ReviewItem))).all()
        assert {row.state for row in items} <= {"approved", "corrected", "rejected"}
        for row in items:
            assert row.votes == 2
            if row.decided_by == "lead":
                assert "lead" not in voters[row.id]
            else:
                assert row.decided_by == voters[row.id][1]  # the second voter, who agreed
        decided_ids = (
            await session.scalars(
                select(ReviewDecision.item_id).where(ReviewDecision.kind.in_(DECISION_KINDS))
            )
        ).all()
        assert len(decided_ids) == len(set(decided_ids)) == ITEMS
    print(f"\n{db_url.split(':')[0]}: {ITEMS} critical items, {REVIEWERS} reviewers, "
          f"{outcomes['disputed']} disputed")  # fmt: skip
