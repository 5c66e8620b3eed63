"""Cases from reviewers' decisions: the best labels the product has.

An ``approved`` item's answer, or a ``corrected`` item's correction, is the expected answer for
its request's messages. An item whose two reviewers disagreed (different decisions, or different
corrections) is a ``hard`` case; the others are ``held_out``.

An item a recorded training export already took (its route, risk tier and decision time inside
that export's filters, decided before the export was made) is left out and counted: a case the
model was trained on tests nothing. Items whose request cannot be read as chat messages (records
kept without bodies, other roles) are left out and counted too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service import clock
from service.db.models import ReviewItem, ReviewVote, TrainingSnapshot
from service.evaluation.cases import Case, CaseKind
from service.guard.prompts import prompt_messages

DECIDED = ("approved", "corrected")


@dataclass(frozen=True, slots=True)
class ReviewWindow:
    since: datetime | None = None  # decided at or after, UTC-aware
    until: datetime | None = None  # decided before


@dataclass(slots=True)
class ReviewedCases:
    cases: list[Case] = field(default_factory=list)
    approved: int = 0
    corrected: int = 0
    hard: int = 0
    unusable: int = 0
    exported: list[str] = field(default_factory=list)  # ids of items left out as trained on

    def report(self) -> dict[str, Any]:
        return {
            "approved": self.approved, "corrected": self.corrected, "hard": self.hard,
            "left_out_unusable": self.unusable, "left_out_exported": len(self.exported),
            "left_out_exported_items": self.exported[:20],
        }  # fmt: skip


async def reviewed_cases(session: AsyncSession, route: str, window: ReviewWindow) -> ReviewedCases:
    query = select(ReviewItem).where(ReviewItem.route == route, ReviewItem.state.in_(DECIDED))
    if window.since is not None:
        query = query.where(ReviewItem.decided_at >= clock.require_utc(window.since))
    if window.until is not None:
        query = query.where(ReviewItem.decided_at < clock.require_utc(window.until))
    items = list(await session.scalars(query.order_by(ReviewItem.id)))
    disputed = await _disputed(session, [item.id for item in items])
    exports = [_ExportScope.of(row) for row in await session.scalars(select(TrainingSnapshot))]
    found = ReviewedCases()
    for item in items:
        decided = clock.as_utc(item.decided_at) if item.decided_at is not None else None
        if decided is not None and any(e.took(route, item.risk, decided) for e in exports):
            found.exported.append(item.id)
            continue
        messages = prompt_messages(item.request_body)
        answer = item.corrected_answer if item.state == "corrected" else item.answer
        if messages is None or not answer or not answer.strip():
            found.unusable += 1
            continue
        hard = item.id in disputed
        found.cases.append(
            Case(
                messages=tuple(messages), expected=answer,
                kind=CaseKind.HARD if hard else CaseKind.HELD_OUT, review_item_id=item.id,
            )
        )  # fmt: skip
        found.hard += hard
        found.approved += item.state == "approved"
        found.corrected += item.state == "corrected"
    return found


async def _disputed(session: AsyncSession, item_ids: list[str]) -> set[str]:
    if not item_ids:
        return set()
    query = (
        select(ReviewVote.item_id)
        .where(ReviewVote.item_id.in_(item_ids))
        .group_by(ReviewVote.item_id)
        .having(
            (func.count(func.distinct(ReviewVote.kind)) > 1)
            | (func.count(func.distinct(ReviewVote.corrected_answer)) > 1)
        )
    )
    return set(await session.scalars(query))


@dataclass(frozen=True, slots=True)
class _ExportScope:
    """What a recorded export took: its filters and when it was made."""

    made_at: datetime
    routes: frozenset[str] | None
    tiers: frozenset[str] | None
    since: datetime | None
    until: datetime | None

    @classmethod
    def of(cls, row: TrainingSnapshot) -> _ExportScope:
        filters = row.manifest.get("filters", {})

        def when(key: str) -> datetime | None:
            raw = filters.get(key)
            return datetime.fromisoformat(raw) if raw else None

        def names(key: str) -> frozenset[str] | None:
            raw = filters.get(key)
            return frozenset(raw) if raw is not None else None

        return cls(
            clock.as_utc(row.created_at), names("routes"), names("tiers"), when("since"),
            when("until"),
        )  # fmt: skip

    def took(self, route: str, risk: str, decided: datetime) -> bool:
        return (
            decided <= self.made_at
            and (self.routes is None or route in self.routes)
            and (self.tiers is None or risk in self.tiers)
            and (self.since is None or decided >= self.since)
            and (self.until is None or decided < self.until)
        )
