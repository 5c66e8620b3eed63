"""Two reviewers deciding one item independently, adjudication, reviewer scopes, the queue SLA
and the quality figures, in the database. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import ReviewItem, ReviewVote
from service.db.session import create_engine, session_factory
from service.review import claims, decisions, model, queue, reads
from service.review.model import AlreadyDecided, ItemState, Outcome, Scope, StaleClaim
from service.review.quality import quality
from service.review.sla import SlaTargets, mark_breaches, overdue_counts

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


async def add(
    sessions: Sessions, *, route: str = "triage", risk: str = "critical", reviews: int = 2,
    reason: str = "always", age_s: float = 0.0, request_id: str = "req",
) -> str:  # fmt: skip
    async with sessions.begin() as session:
        return await queue.enqueue(
            session,
            queue.NewItem(
                request_id=request_id, route=route, target="m@1", reason=reason,
                answer='{"category": "billing"}', created_at=NOW - timedelta(seconds=age_s),
                risk=risk, reviews_needed=reviews,
            ),
        )  # fmt: skip


async def vote(
    sessions: Sessions, reviewer: str, kind: str, payload: str | None = None, *,
    adjudicator: bool = False,
) -> model.Decision:  # fmt: skip
    got = await claims.claim_next(sessions, reviewer, NOW, LEASE_S, adjudicator=adjudicator)
    assert got is not None, f"{reviewer} found nothing to claim"
    return await decisions.decide(sessions, got.item.id, got.token, reviewer, kind, payload, NOW)


async def item(sessions: Sessions, item_id: str) -> model.ReviewItemView:
    async with sessions() as session:
        return await reads.get(session, item_id)


async def kinds(sessions: Sessions, item_id: str) -> list[str]:
    async with sessions() as session:
        return [h.kind for h in await reads.history(session, item_id)]


async def test_two_reviewers_who_agree_decide_the_item(sessions: Sessions) -> None:
    item_id = await add(sessions)
    first = await vote(sessions, "ann", "correct", '{"category": "tech"}')
    assert first.outcome is Outcome.VOTED
    waiting = await item(sessions, item_id)
    assert waiting.state is ItemState.PENDING and waiting.votes == 1
    assert waiting.decided_by is None and waiting.corrected_answer is None
    # The first reviewer cannot take it again; somebody else can.
    assert await claims.claim_next(sessions, "ann", NOW, LEASE_S) is None
    second = await vote(sessions, "bob", "correct", '{ "category" : "tech" }')  # same JSON
    assert second.outcome is Outcome.DECIDED
    done = await item(sessions, item_id)
    assert done.state is ItemState.CORRECTED and done.decided_by == "bob" and done.votes == 2
    assert await kinds(sessions, item_id) == ["vote", "vote", "correct"]
    async with sessions() as session:
        votes = await reads.votes(session, item_id)
    assert [(v.seq, v.reviewer, v.kind.value) for v in votes] == [
        (1, "ann", "correct"), (2, "bob", "correct"),
    ]  # fmt: skip


async def test_a_disagreement_goes_to_an_adjudicator(sessions: Sessions) -> None:
    item_id = await add(sessions)
    await vote(sessions, "ann", "approve")
    second = await vote(sessions, "bob", "reject", "wrong category")
    assert second.outcome is Outcome.DISPUTED
    disputed = await item(sessions, item_id)
    assert disputed.state is ItemState.DISPUTED and disputed.adjudication
    # Neither a plain reviewer nor one of the two voters adjudicates.
    assert await claims.claim_next(sessions, "cid", NOW, LEASE_S) is None
    assert await claims.claim_next(sessions, "ann", NOW, LEASE_S, adjudicator=True) is None
    final = await vote(sessions, "lead", "correct", '{"category": "sales"}', adjudicator=True)
    assert final.outcome is Outcome.DECIDED
    done = await item(sessions, item_id)
    assert done.state is ItemState.CORRECTED and done.decided_by == "lead"
    assert await kinds(sessions, item_id) == ["vote", "vote", "disputed", "correct"]


async def test_an_adjudication_claim_that_runs_out_returns_to_disputed(
    sessions: Sessions,
) -> None:
    item_id = await add(sessions)
    await vote(sessions, "ann", "approve")
    await vote(sessions, "bob", "reject", "no")
    got = await claims.claim_next(sessions, "lead", NOW, 30, adjudicator=True)
    assert got is not None and got.item.id == item_id
    later = NOW + timedelta(seconds=60)
    assert await claims.release_expired(sessions, later) == 1
    assert (await item(sessions, item_id)).state is ItemState.DISPUTED
    again = await claims.claim_next(sessions, "boss", later, LEASE_S, adjudicator=True)
    assert again is not None and again.item.id == item_id and again.token == got.token + 1


async def test_adjudicators_take_disputes_first(sessions: Sessions) -> None:
    plain = await add(sessions, risk="medium", reviews=1, age_s=100)
    disputed = await add(sessions)
    await vote(sessions, "ann", "approve")  # the oldest first: the plain item
    async with sessions() as session:
        assert (await reads.get(session, plain)).state is ItemState.APPROVED
    await vote(sessions, "ann", "approve")
    await vote(sessions, "bob", "reject", "no")
    later = await add(sessions, risk="medium", reviews=1, age_s=200)
    got = await claims.claim_next(sessions, "lead", NOW, LEASE_S, adjudicator=True)
    assert got is not None and got.item.id == disputed
    got2 = await claims.claim_next(sessions, "cid", NOW, LEASE_S)
    assert got2 is not None and got2.item.id == later


async def test_repeating_a_vote_is_idempotent(sessions: Sessions) -> None:
    item_id = await add(sessions)
    got = await claims.claim_next(sessions, "ann", NOW, LEASE_S)
    assert got is not None
    first = await decisions.decide(sessions, item_id, got.token, "ann", "reject", "bad", NOW)
    again = await decisions.decide(sessions, item_id, got.token, "ann", "reject", "bad", NOW)
    assert again.outcome is first.outcome is Outcome.VOTED
    with pytest.raises(AlreadyDecided):
        await decisions.decide(sessions, item_id, got.token, "ann", "approve", None, NOW)
    with pytest.raises(StaleClaim):
        await decisions.decide(sessions, item_id, got.token, "bob", "approve", None, NOW)
    async with sessions() as session:
        assert len(await reads.votes(session, item_id)) == 1


async def test_the_database_refuses_a_reviewer_voting_twice(sessions: Sessions) -> None:
    item_id = await add(sessions)
    await vote(sessions, "ann", "approve")
    async with sessions() as session:
        rows = (await session.scalars(select(ReviewVote))).all()
    assert [(r.item_id, r.reviewer, r.seq) for r in rows] == [(item_id, "ann", 1)]
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(
                ReviewVote(
                    item_id=item_id, seq=2, reviewer="ann", kind="approve", claim_token=9, at=NOW
                )
            )


async def test_a_reviewer_key_limited_to_tiers_and_routes(sessions: Sessions) -> None:
    low = await add(sessions, risk="low", reviews=1, reason="qa_sample", age_s=30)
    high = await add(sessions, route="billing", risk="high", reviews=1, age_s=20)
    crit = await add(sessions, risk="critical", age_s=10)
    only_high = Scope(tiers=frozenset({"high"}))
    got = await claims.claim_next(sessions, "ann", NOW, LEASE_S, scope=only_high)
    assert got is not None and got.item.id == high
    assert await claims.claim_next(sessions, "ann", NOW, LEASE_S, scope=only_high) is None
    triage = Scope(routes=frozenset({"triage"}), tier="critical")
    got = await claims.claim_next(sessions, "bob", NOW, LEASE_S, scope=triage)
    assert got is not None and got.item.id == crit
    async with sessions() as session:
        listed = await reads.list_items(session, scope=Scope(tiers=frozenset({"low"})))
    assert [i.id for i in listed] == [low]


async def test_overdue_items_come_first_and_are_counted_once(sessions: Sessions) -> None:
    sla = SlaTargets(low_s=3600, medium_s=600, high_s=300, critical_s=60)
    fresh_high = await add(sessions, risk="high", reviews=1, age_s=200)
    late_low = await add(sessions, risk="low", reviews=1, age_s=4000)
    late_crit = await add(sessions, risk="critical", reviews=2, age_s=61)
    old_medium = await add(sessions, risk="medium", reviews=1, age_s=500)  # oldest in time
    async with sessions() as session:
        order = [i.id for i in await reads.list_items(session, sla=sla, now=NOW)]
        overdue = await overdue_counts(session, sla, NOW)
    assert order == [late_low, late_crit, old_medium, fresh_high]
    assert overdue == {"low": 1, "medium": 0, "high": 0, "critical": 1}
    async with queue.write_transaction(sessions) as session:
        assert await mark_breaches(session, sla, NOW) == {
            ("triage", "low"): 1, ("triage", "critical"): 1,
        }  # fmt: skip
    async with queue.write_transaction(sessions) as session:
        assert await mark_breaches(session, sla, NOW) == {}
    got = await claims.claim_next(sessions, "ann", NOW, LEASE_S, sla=sla)
    assert got is not None and got.item.id == late_low


async def test_quality_figures(sessions: Sessions) -> None:
    # Route triage: (approve, approve), (correct, correct), (approve, reject), (reject, reject)
    # by ann then bob: p_o = 3/4; ann: approve 2, correct 1, reject 1; bob: approve 1,
    # correct 1, reject 2; p_e = (2 + 1 + 2) / 16 = 5/16; kappa = (12/16 - 5/16) / (11/16).
    cases = [("approve", None, "approve", None),
                 ("correct", '{"a": 1, "b": 2}', "correct", '{"a": 1, "b": 2}'),
                 ("approve", None, "reject", "no"), ("reject", "x", "reject", "y")]  # fmt: skip
    for first, p1, second, p2 in cases:
        await add(sessions)
        await vote(sessions, "ann", first, p1)
        await vote(sessions, "bob", second, p2)
    for i, kind in enumerate(["approve", "approve", "correct", "reject", None]):
        await add(sessions, route="faq", risk="low", reviews=1, reason="qa_sample",
                  request_id=f"qa-{i}")  # fmt: skip
        if kind is not None:
            await vote(sessions, "cid", kind, {"approve": None, "correct": "{}",
                                               "reject": "no"}[kind])  # fmt: skip
    async with sessions() as session:
        figures = await quality(session)
    triage = figures.agreement["triage"]
    assert triage.items == 4 and triage.observed == 0.75
    assert triage.kappa == pytest.approx((12 / 16 - 5 / 16) / (11 / 16))
    assert triage.corrections == 1 and triage.field_agreement == 1.0
    assert [p.reviewers for p in figures.pairs] == [("ann", "bob")]
    qa = figures.qa["faq"]
    assert qa.sampled == 5 and qa.changed.n == 4 and qa.changed.hits == 2
    assert qa.changed.low is not None and qa.changed.low < 0.5 < qa.changed.high  # type: ignore[operator]


async def test_stored_item_columns(sessions: Sessions) -> None:
    item_id = await add(sessions, risk="high", reviews=1)
    async with sessions() as session:
        row = await session.get(ReviewItem, item_id)
    assert row is not None and (row.risk, row.reviews_needed, row.votes) == ("high", 1, 0)
