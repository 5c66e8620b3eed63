"""The review queue's SLA: per risk tier, how old an open item may grow before it is overdue.

Overdue items are listed and handed out first, highlighted in the UI, and each is counted once
in ``loragate_review_sla_breaches_total`` (``mark_breaches`` stamps ``sla_breached_at`` with a
conditional UPDATE, so of several replicas only one counts a given item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import require_utc
from service.db.models import ReviewItem
from service.guard.tiers import Risk
from service.review.model import ReviewItemView
from service.settings import Settings

OPEN_STATES = ("pending", "claimed", "disputed")


@dataclass(frozen=True, slots=True)
class SlaTargets:
    """Target age of an open review item per risk tier, in seconds."""

    low_s: float = 24 * 3600.0
    medium_s: float = 4 * 3600.0
    high_s: float = 3600.0
    critical_s: float = 15 * 60.0

    def target_s(self, risk: str) -> float:
        return {
            Risk.LOW.value: self.low_s,
            Risk.MEDIUM.value: self.medium_s,
            Risk.HIGH.value: self.high_s,
            Risk.CRITICAL.value: self.critical_s,
        }.get(risk, self.medium_s)

    def per_tier(self) -> dict[str, float]:
        return {tier.value: self.target_s(tier.value) for tier in Risk}

    def is_overdue(self, risk: str, created_at: datetime, now: datetime) -> bool:
        return (now - created_at).total_seconds() > self.target_s(risk)

    def is_late(self, item: ReviewItemView, now: datetime) -> bool:
        """The item is open and older than its tier's target age."""
        return item.state.value in OPEN_STATES and self.is_overdue(item.risk, item.created_at, now)


def sla_targets(settings: Settings) -> SlaTargets:
    return SlaTargets(
        low_s=settings.review_sla_low_s,
        medium_s=settings.review_sla_medium_s,
        high_s=settings.review_sla_high_s,
        critical_s=settings.review_sla_critical_s,
    )


def overdue(targets: SlaTargets | None, now: datetime) -> ColumnElement[bool]:
    """SQL: the item was created longer ago than its tier's target age (open or not)."""
    if targets is None:
        return false()
    now = require_utc(now)
    return or_(
        *(
            and_(
                ReviewItem.risk == tier,
                ReviewItem.created_at < now - timedelta(seconds=target),
            )
            for tier, target in targets.per_tier().items()
        )
    )


def open_and_overdue(targets: SlaTargets, now: datetime) -> ColumnElement[bool]:
    return and_(ReviewItem.state.in_(OPEN_STATES), overdue(targets, now))


async def mark_breaches(
    session: AsyncSession, targets: SlaTargets, now: datetime
) -> dict[tuple[str, str], int]:
    """Stamp open items newly past their target age; returns how many per (route, tier)."""
    rows = await session.execute(
        update(ReviewItem)
        .where(open_and_overdue(targets, now), ReviewItem.sla_breached_at.is_(None))
        .values(sla_breached_at=require_utc(now))
        .returning(ReviewItem.route, ReviewItem.risk)
        .execution_options(synchronize_session=False)
    )
    counts: dict[tuple[str, str], int] = {}
    for route, risk in rows:
        counts[(route, risk)] = counts.get((route, risk), 0) + 1
    return counts


async def overdue_counts(
    session: AsyncSession, targets: SlaTargets, now: datetime, where: Sequence[Any] = ()
) -> Mapping[str, int]:
    """Open items past their target age now, per tier; ``where`` narrows them (a key's scope)."""
    rows = await session.execute(
        select(ReviewItem.risk, func.count())
        .where(open_and_overdue(targets, now), *where)
        .group_by(ReviewItem.risk)
    )
    found: dict[str, Any] = dict(rows.tuples().all())
    return {tier.value: int(found.get(tier.value, 0)) for tier in Risk}
