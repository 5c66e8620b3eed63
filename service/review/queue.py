"""The review queue in the database: its short write transactions, its rows read as values,
its filters and order, and ``enqueue``, by which an escalated answer enters it.

Claims and leases are in ``service.review.claims``, decisions in ``service.review.decisions``,
reads in ``service.review.reads``. Times are always passed in (``now``), never read here, so
leases can be tested tick by tick. The write operations take an ``async_sessionmaker`` and run
their own short transaction (``write_transaction``), except ``enqueue``, which joins the
caller's transaction so an item is written together with its request record.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case
from sqlalchemy.ext.asyncio import AsyncSession

from service.clock import as_utc, require_utc
from service.db.models import ReviewItem
from service.db.session import insert_ignoring_duplicates
from service.db.session import write_transaction as write_transaction  # re-exported
from service.review.model import ItemState, ReviewItemView, Scope
from service.review.sla import SlaTargets, overdue


def item_view(row: Any) -> ReviewItemView:
    """From an ORM row or a Core row of ``review_items`` (same attribute names)."""
    return ReviewItemView(
        id=row.id, request_id=row.request_id, route=row.route, target=row.target,
        reason=row.reason, priority=row.priority, state=ItemState(row.state),
        created_at=as_utc(row.created_at), claimed_by=row.claimed_by,
        lease_until=as_utc(row.lease_until) if row.lease_until is not None else None,
        claim_token=row.claim_token,
        expiries=row.expiries, answer=row.answer, request_body=row.request_body,
        confidence=row.confidence, field_confidence=row.field_confidence,
        schema_errors=row.schema_errors,
        decided_at=as_utc(row.decided_at) if row.decided_at is not None else None,
        decided_by=row.decided_by, corrected_answer=row.corrected_answer,
        reject_reason=row.reject_reason, risk=row.risk, reviews_needed=row.reviews_needed,
        votes=row.votes,
        sla_breached_at=as_utc(row.sla_breached_at) if row.sla_breached_at else None,
    )  # fmt: skip


def rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


async def is_postgres(session: AsyncSession) -> bool:
    return (await session.connection()).dialect.name == "postgresql"


def scope_clauses(scope: Scope) -> list[Any]:
    """SQL: the items in ``scope`` (a key's routes and tiers, and the filters asked for)."""
    found: list[Any] = []
    if scope.routes is not None:
        found.append(ReviewItem.route.in_(sorted(scope.routes)))
    if scope.tiers is not None:
        found.append(ReviewItem.risk.in_(sorted(scope.tiers)))
    if scope.route is not None:
        found.append(ReviewItem.route == scope.route)
    if scope.reason is not None:
        found.append(ReviewItem.reason == scope.reason)
    if scope.tier is not None:
        found.append(ReviewItem.risk == scope.tier)
    return found


def claim_order(sla: SlaTargets | None = None, now: datetime | None = None) -> tuple[Any, ...]:
    """Overdue items first (with SLA targets), then the highest priority, then the oldest."""
    order: tuple[Any, ...] = (ReviewItem.priority.desc(), ReviewItem.created_at, ReviewItem.id)
    if sla is not None and now is not None:
        order = (case((overdue(sla, now), 0), else_=1), *order)
    return order


@dataclass(frozen=True, slots=True)
class NewItem:
    """An escalated answer, to be queued with its request record."""

    request_id: str
    route: str
    target: str
    reason: str
    answer: str
    created_at: datetime
    priority: int = 0
    request_body: str | None = None
    confidence: float | None = None
    field_confidence: Mapping[str, float] | None = None
    schema_errors: Sequence[Any] | None = None
    item_id: str | None = None
    risk: str = "medium"
    reviews_needed: int = 1  # 2: decided by two reviewers independently


def _item_row(item: NewItem, item_id: str) -> dict[str, Any]:
    fields, errors = item.field_confidence, item.schema_errors
    return {
        "id": item_id, "request_id": item.request_id, "route": item.route,
        "target": item.target, "reason": item.reason, "priority": item.priority,
        "state": ItemState.PENDING.value, "created_at": require_utc(item.created_at),
        "claimed_by": None, "lease_until": None, "claim_token": 0, "expiries": 0,
        "answer": item.answer, "request_body": item.request_body,
        "confidence": item.confidence,
        "field_confidence": dict(fields) if fields is not None else None,
        "schema_errors": list(errors) if errors is not None else None,
        "risk": item.risk, "reviews_needed": item.reviews_needed, "votes": 0,
        "sla_breached_at": None,
    }  # fmt: skip


async def enqueue(session: AsyncSession, item: NewItem) -> str:
    """Add a pending item to the caller's transaction (with its request record); returns its id.

    Nothing is flushed or committed here: the caller's unit of work writes the record and the
    item together, or neither.
    """
    item_id = item.item_id or uuid.uuid4().hex
    session.add(ReviewItem(**_item_row(item, item_id)))
    return item_id


async def enqueue_shipped(session: AsyncSession, items: Sequence[NewItem]) -> None:
    """Add the items that came with shipped records; an id already queued is left as it is.

    Records are shipped at least once (a segment may be shipped again after a crash), so the
    item id, given by the gateway, makes the second insert a no-op.
    """
    rows = [_item_row(item, item.item_id or uuid.uuid4().hex) for item in items]
    table = cast(Table, ReviewItem.__table__)
    await session.execute(insert_ignoring_duplicates(session, table), rows)
