"""Reading what calibration needs: reviewed answers per version, and how often a route answers
under a confidence (``service.review.calibration`` holds the figures)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from rollout.core.split import Arm
from service.clock import as_utc, require_utc
from service.db.models import RequestRecord, ReviewItem
from service.review.calibration import (
    CHANGED,
    KEPT,
    Calibration,
    Outcome,
    answer_outcome,
    calibration,
    field_outcomes,
)
from service.review.model import EVERYTHING, Scope
from service.review.queue import scope_clauses

# The newest reviewed answers read per figure: enough for tight bins, bounded for the page.
MAX_REVIEWED = 10_000
# Answers a client got (a shadow answer is never escalated, so it never counts here).
ANSWERED_ARMS = (Arm.STABLE.value, Arm.CANARY.value)
MIN_SPAN = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Reviewed:
    item_id: str
    answer: Outcome  # the answer's confidence, and whether the reviewer kept it
    fields: list[Outcome]


@dataclass(frozen=True, slots=True)
class VersionCalibration:
    route: str
    target: str  # the adapter version (or model) that answered
    answers: Calibration  # per answer: approved right, corrected or rejected wrong
    fields: Calibration | None  # per field of approved and corrected answers


async def reviewed(
    session: AsyncSession, since: datetime | None = None, scope: Scope = EVERYTHING,
    target: str | None = None,
) -> dict[tuple[str, str], list[Reviewed]]:  # fmt: skip
    """Per (route, version): its decided review items with a confidence, newest first."""
    is_correction = ReviewItem.state == "corrected"
    query = (
        select(
            ReviewItem.id, ReviewItem.route, ReviewItem.target, ReviewItem.state,
            ReviewItem.confidence, ReviewItem.field_confidence,
            # Only a correction is compared field by field: other answers' texts stay unread.
            case((is_correction, ReviewItem.answer), else_=None),
            case((is_correction, ReviewItem.corrected_answer), else_=None),
        )
        .where(
            ReviewItem.state.in_((KEPT, *CHANGED)), ReviewItem.confidence.is_not(None),
            *scope_clauses(scope),
        )
        .order_by(ReviewItem.created_at.desc(), ReviewItem.id)
        .limit(MAX_REVIEWED)
    )  # fmt: skip
    if since is not None:
        query = query.where(ReviewItem.created_at >= require_utc(since))
    if target is not None:
        query = query.where(ReviewItem.target == target)
    found: dict[tuple[str, str], list[Reviewed]] = defaultdict(list)
    rows = await session.execute(query)
    for item_id, route, version, state, score, scores, answer, corrected in rows:
        if score is None:  # excluded by the query; narrows the type
            continue
        fields = field_outcomes(state, answer, corrected, scores)
        found[(route, version)].append(Reviewed(item_id, answer_outcome(state, score), fields))
    return dict(found)


def per_version(found: dict[tuple[str, str], list[Reviewed]]) -> list[VersionCalibration]:
    """The calibration figures of each version, by route then version."""
    shown = []
    for (route, target), items in sorted(found.items()):
        answers = calibration([r.answer for r in items])
        if answers is None:
            continue
        fields = calibration([o for r in items for o in r.fields])
        shown.append(VersionCalibration(route, target, answers, fields))
    return shown


async def latest_target(session: AsyncSession, route: str) -> str | None:
    """The version of the route's most recently decided review item."""
    query = (
        select(ReviewItem.target)
        .where(ReviewItem.route == route, ReviewItem.state.in_((KEPT, *CHANGED)))
        .order_by(ReviewItem.decided_at.desc(), ReviewItem.id)
        .limit(1)
    )
    found = await session.scalar(query)
    return str(found) if found is not None else None


@dataclass(frozen=True, slots=True)
class Rate:
    below: int  # answers under the threshold in the window
    answered: int  # answers with a confidence in the window
    days: float  # the window's length: since its first answer, at least an hour

    @property
    def per_day(self) -> float:
        return self.below / self.days if self.days > 0 else 0.0


async def answer_rate(
    session: AsyncSession, route: str, target: str, threshold: float, since: datetime,
    now: datetime,
) -> Rate:  # fmt: skip
    """How many answers of ``target`` on ``route`` clients got since ``since`` scored under
    ``threshold``, of how many scored, over how many days (counted from the first answer of
    the window, so a version that started answering yesterday is not diluted by a week)."""
    scored = RequestRecord.confidence
    query = select(
        func.count(scored),
        func.count(scored).filter(scored < threshold),
        func.min(RequestRecord.created_at),
    ).where(
        RequestRecord.route == route,
        RequestRecord.target == target,
        RequestRecord.arm.in_(ANSWERED_ARMS),
        RequestRecord.created_at >= require_utc(since),
        scored.is_not(None),
    )
    answered, below, first = (await session.execute(query)).one()
    start = max(as_utc(first), require_utc(since)) if first is not None else now
    span = max(require_utc(now) - start, MIN_SPAN)
    return Rate(int(below or 0), int(answered or 0), span / timedelta(days=1))
