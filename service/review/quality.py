"""How good the review itself is, from the database: the QA estimate and reviewer agreement.

- QA: of the answers nobody escalated that were sampled for review (reason ``qa_sample``), the
  share a reviewer corrected or rejected, with its Wilson interval: how often an unescalated
  answer would have been changed.
- Agreement: items decided by two reviewers independently (``review_votes``): Cohen's kappa on
  approve/correct/reject per route and per reviewer pair, and field agreement on corrections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from service.clock import require_utc
from service.db.models import ReviewItem, ReviewVote
from service.guard.policy import QA_SAMPLE
from service.review.agreement import Agreement, Pair, Proportion, agreement, wilson
from service.review.model import EVERYTHING, Scope
from service.review.queue import scope_clauses

CHANGED = ("corrected", "rejected")
DECIDED = ("approved", "corrected", "rejected")


@dataclass(frozen=True, slots=True)
class QaEstimate:
    sampled: int  # QA samples queued (decided or not)
    changed: Proportion  # of those decided: corrected or rejected


@dataclass(frozen=True, slots=True)
class PairAgreement:
    reviewers: tuple[str, str]  # ordered by key id
    agreement: Agreement


@dataclass(frozen=True, slots=True)
class Quality:
    qa: Mapping[str, QaEstimate]  # per route
    agreement: Mapping[str, Agreement]  # per route
    pairs: list[PairAgreement]


async def qa_estimates(
    session: AsyncSession, since: datetime | None = None, scope: Scope = EVERYTHING
) -> dict[str, QaEstimate]:
    """Per route: QA samples, and the share of the decided ones a reviewer changed."""
    state = ReviewItem.state
    query = (
        select(
            ReviewItem.route,
            func.count(),
            func.sum(case((state.in_(DECIDED), 1), else_=0)),
            func.sum(case((state.in_(CHANGED), 1), else_=0)),
        )
        .where(ReviewItem.reason == QA_SAMPLE, *scope_clauses(scope))
        .group_by(ReviewItem.route)
    )
    if since is not None:
        query = query.where(ReviewItem.created_at >= require_utc(since))
    return {
        route: QaEstimate(int(count), wilson(int(changed or 0), int(decided or 0)))
        for route, count, decided, changed in await session.execute(query)
    }


async def vote_pairs(
    session: AsyncSession, since: datetime | None = None, scope: Scope = EVERYTHING
) -> list[tuple[str, str, str, Pair]]:
    """(route, first reviewer, second reviewer, their pair of decisions) per item with two."""
    first, second = aliased(ReviewVote), aliased(ReviewVote)
    query = (
        select(
            ReviewItem.route, first.reviewer, second.reviewer, first.kind, second.kind,
            first.corrected_answer, second.corrected_answer,
        )
        .join(first, and_(first.item_id == ReviewItem.id, first.seq == 1))
        .join(second, and_(second.item_id == ReviewItem.id, second.seq == 2))
        .where(*scope_clauses(scope))
        .order_by(ReviewItem.created_at, ReviewItem.id)
    )  # fmt: skip
    if since is not None:
        query = query.where(ReviewItem.created_at >= require_utc(since))
    return [
        (route, a, b, Pair(kind_a, kind_b, answer_a, answer_b))
        for route, a, b, kind_a, kind_b, answer_a, answer_b in await session.execute(query)
    ]


def _oriented(a: str, b: str, pair: Pair) -> tuple[tuple[str, str], Pair]:
    """The pair with the reviewer of the smaller key id first, so (a, b) and (b, a) pool."""
    if a <= b:
        return (a, b), pair
    return (b, a), Pair(pair.second, pair.first, pair.second_answer, pair.first_answer)


async def quality(
    session: AsyncSession, since: datetime | None = None, scope: Scope = EVERYTHING
) -> Quality:
    """QA and agreement figures of the items in ``scope`` (a key's routes and tiers)."""
    per_route: dict[str, list[Pair]] = defaultdict(list)
    per_pair: dict[tuple[str, str], list[Pair]] = defaultdict(list)
    for route, a, b, pair in await vote_pairs(session, since, scope):
        per_route[route].append(pair)
        names, oriented = _oriented(a, b, pair)
        per_pair[names].append(oriented)
    return Quality(
        qa=await qa_estimates(session, since, scope),
        agreement={route: agreement(pairs) for route, pairs in sorted(per_route.items())},
        pairs=[PairAgreement(names, agreement(pairs)) for names, pairs in sorted(per_pair.items())],
    )
