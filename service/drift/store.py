"""Drift monitoring in the database: features counted per bin by aggregate queries, and the
stored references.

Only counts cross into Python: a number feature's bins are one ``SUM(CASE ...)`` column each
(all number features of a window in one query), a category feature is one ``GROUP BY``, and
the quantile edges of a reference are read one value at a time (``ORDER BY ... OFFSET``).
Answer fields are read out of the JSON ``fields`` column in SQL, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from rollout.core.split import Arm
from service.clock import as_utc
from service.db.models import DriftReference, RequestRecord, ReviewItem
from service.drift.features import Feature, Source
from service.drift.slo import ServiceCounts, quantile_rank
from service.drift.statistics import Kind, edges_from, quantile_ranks

# A category feature reads at most this many distinct values per window (the most frequent).
MAX_GROUPS = 200
# The service section names at most this many error classes (the most frequent).
MAX_ERROR_CLASSES = 20
# Windows are [since, until): a reference that ends at a record ends just after it.
TICK = timedelta(microseconds=1)
DECIDED = {"approved": "approve", "corrected": "correct", "rejected": "reject"}
PROFILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Window:
    """One route's version over [since, until); with ``any_target``, the route's traffic in
    that range whichever versions served it (a pinned reference: "compare with last week")."""

    route: str
    target: str
    since: datetime
    until: datetime
    any_target: bool = False


@dataclass(frozen=True, slots=True)
class NumberCounts:
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    """A window's histograms: per feature, bin counts (numbers: at ``edges``)."""

    samples: int
    numbers: Mapping[str, NumberCounts]
    categories: Mapping[str, Mapping[str, int]]

    def row(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "samples": self.samples,
            "numbers": {
                n: {"edges": list(c.edges), "counts": list(c.counts)}
                for n, c in self.numbers.items()
            },
            "categories": {n: dict(c) for n, c in self.categories.items()},
        }

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Profile:
        return cls(
            int(row["samples"]),
            {
                n: NumberCounts(tuple(map(float, c["edges"])), tuple(map(int, c["counts"])))
                for n, c in row["numbers"].items()
            },
            {n: {str(k): int(v) for k, v in c.items()} for n, c in row["categories"].items()},
        )


@dataclass(frozen=True, slots=True)
class StoredReference:
    route: str
    target: str
    pinned: bool
    source: str
    since: datetime
    until: datetime
    samples: int
    rollout_id: str | None
    profile: Profile | None
    created_at: datetime
    created_by: str | None


def _stored(row: DriftReference) -> StoredReference:
    return StoredReference(
        row.route, row.target, row.pinned, row.source, as_utc(row.since), as_utc(row.until),
        row.samples, row.rollout_id, Profile.of(row.profile) if row.profile else None,
        as_utc(row.created_at), row.created_by,
    )  # fmt: skip


# --- expressions ----------------------------------------------------------------------------


def _in_window(w: Window) -> tuple[ColumnElement[bool], ...]:
    r = RequestRecord
    served = r.target.is_not(None) if w.any_target else r.target == w.target
    return (r.route == w.route, served, r.created_at >= w.since,
            r.created_at < w.until)  # fmt: skip


def _ok() -> ColumnElement[bool]:
    return RequestRecord.status_code < 400


def _field_number(name: str, dialect: str) -> ColumnElement[Any]:
    """The answer field as a number, NULL where the record holds something else there."""
    fields = RequestRecord.fields
    if dialect == "postgresql":
        is_number = func.json_typeof(fields[name]) == "number"
    else:
        is_number = func.json_type(fields, f'$."{name}"').in_(["integer", "real"])
    return case((is_number, fields[name].as_float()))


def _number(feature: Feature, dialect: str) -> tuple[ColumnElement[Any], ColumnElement[bool]]:
    """A number feature's value, and which records it is read from."""
    if feature.source is Source.ANSWER_FIELD:
        value = _field_number(feature.key, dialect)
    else:
        value = getattr(RequestRecord, feature.key)
    return value, and_(_ok(), value.is_not(None))


def _category(feature: Feature) -> tuple[ColumnElement[Any], ColumnElement[bool]]:
    r = RequestRecord
    if feature.source is Source.SCHEMA_VALID:
        return case((r.schema_valid.is_(True), "valid"), else_="invalid"), r.schema_valid.is_not(
            None
        )
    if feature.source is Source.ESCALATED:
        return case((r.escalated.is_(True), "escalated"), else_="answered"), r.escalated.is_not(
            None
        )
    if feature.source is Source.ANSWER_FIELD:
        value = r.fields[feature.key].as_string()
        return value, value.is_not(None)
    raise ValueError(f"{feature.name} is not a category of request records")


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


# --- counting -------------------------------------------------------------------------------


async def count_records(session: AsyncSession, w: Window) -> int:
    query = select(func.count()).select_from(RequestRecord).where(*_in_window(w))
    return int(await session.scalar(query) or 0)


async def number_counts(
    session: AsyncSession, w: Window, features: Mapping[Feature, Sequence[float]]
) -> dict[str, NumberCounts]:
    """Each number feature's counts per bin of its ``edges``, all in one query."""
    if not features:
        return {}
    dialect = _dialect(session)
    columns: list[ColumnElement[Any]] = []
    shapes: list[tuple[str, tuple[float, ...]]] = []
    for feature, raw_edges in features.items():
        edges = tuple(raw_edges)
        value, where = _number(feature, dialect)
        bounds = [None, *edges, None]
        for low, high in itertools.pairwise(bounds):
            test = [where]
            if low is not None:
                test.append(value >= low)
            if high is not None:
                test.append(value < high)
            columns.append(func.sum(case((and_(*test), 1), else_=0)))
        shapes.append((feature.name, edges))
    row = (await session.execute(select(*columns).where(*_in_window(w)))).one()
    found: dict[str, NumberCounts] = {}
    at = 0
    for name, edges in shapes:
        size = len(edges) + 1
        found[name] = NumberCounts(edges, tuple(int(v or 0) for v in row[at : at + size]))
        at += size
    return found


async def category_counts(session: AsyncSession, w: Window, feature: Feature) -> dict[str, int]:
    """Records per value of a category feature (the ``MAX_GROUPS`` most frequent values)."""
    if feature.source is Source.REVIEW:
        return await _review_counts(session, w)
    value, where = _category(feature)
    count = func.count()
    query = (
        select(value, count)
        .where(*_in_window(w), where)
        .group_by(value)
        .order_by(count.desc())
        .limit(MAX_GROUPS)
    )
    return {_label(v): int(n) for v, n in await session.execute(query)}


def _label(value: object) -> str:
    # SQLite hands back a stored number as a number; PostgreSQL's ->> as text.
    return value if isinstance(value, str) else str(value)


async def _review_counts(session: AsyncSession, w: Window) -> dict[str, int]:
    item = ReviewItem
    query = (
        select(item.state, func.count())
        .where(item.route == w.route, item.created_at >= w.since, item.created_at < w.until,
               item.state.in_(list(DECIDED)),
               item.target.is_not(None) if w.any_target else item.target == w.target)
        .group_by(item.state)
    )  # fmt: skip
    return {DECIDED[state]: int(n) for state, n in await session.execute(query)}


async def quantile_edges(
    session: AsyncSession, w: Window, feature: Feature, bins: int
) -> tuple[float, ...]:
    """The window's quantile edges of a number feature, one ``OFFSET`` read per edge."""
    value, where = _number(feature, _dialect(session))
    n = int(await session.scalar(select(func.count()).where(*_in_window(w), where)) or 0)
    found: list[float] = []
    for rank in quantile_ranks(n, bins):
        query = select(value).where(*_in_window(w), where).order_by(value).offset(rank).limit(1)
        at = await session.scalar(query)
        if at is not None:
            found.append(float(at))
    return edges_from(found)


async def profile(
    session: AsyncSession,
    w: Window,
    features: Sequence[Feature],
    bins: int,
    edges: Mapping[str, Sequence[float]] | None = None,
) -> Profile:
    """A window's histograms. Number bins are at ``edges`` when given (a current window read
    against its reference), else at the window's own quantiles (a reference)."""
    numbers: dict[Feature, Sequence[float]] = {}
    for feature in features:
        if feature.kind is not Kind.NUMBER:
            continue
        if edges is None:
            numbers[feature] = await quantile_edges(session, w, feature, bins)
        elif feature.name in edges:
            numbers[feature] = edges[feature.name]
    categories = {
        f.name: await category_counts(session, w, f) for f in features if f.kind is Kind.CATEGORY
    }
    return Profile(
        await count_records(session, w), await number_counts(session, w, numbers), categories
    )


async def count_version_records(
    session: AsyncSession, route: str, target: str, since: datetime | None, arm: Arm | None
) -> int:
    """Records of the version on the route at or after ``since`` (of one arm, if given)."""
    r = RequestRecord
    query = select(func.count()).where(r.route == route, r.target == target)
    if since is not None:
        query = query.where(r.created_at >= since)
    if arm is not None:
        query = query.where(r.arm == arm.value)
    return int(await session.scalar(query) or 0)


async def nth_record_at(
    session: AsyncSession, route: str, target: str, since: datetime | None, n: int, arm: Arm | None
) -> datetime | None:
    """When the ``n``-th record (1-based) of the version on the route at or after ``since``
    was made; None when there are fewer."""
    r = RequestRecord
    query = select(r.created_at).where(r.route == route, r.target == target)
    if since is not None:
        query = query.where(r.created_at >= since)
    if arm is not None:
        query = query.where(r.arm == arm.value)
    found = await session.scalar(query.order_by(r.created_at).offset(n - 1).limit(1))
    return as_utc(found) if found is not None else None


# --- service health -------------------------------------------------------------------------


async def service_counts(session: AsyncSession, w: Window) -> ServiceCounts:
    """The window's requests, 5xx, answers cut by a limit, p95 latency and time to first token
    (one ``OFFSET`` read each) and error classes."""
    r = RequestRecord
    ok = _ok()

    def where(*tests: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.sum(case((and_(*tests), 1), else_=0))

    totals = select(
        func.count(), where(r.status_code >= 500), where(ok),
        where(ok, r.finish_reason == "length"), where(ok, r.latency_ms.is_not(None)),
        where(ok, r.ttft_ms.is_not(None)),
    ).where(*_in_window(w))  # fmt: skip
    requests, errors, answered, cut, latencies, ttfts = (
        int(v or 0) for v in (await session.execute(totals)).one()
    )
    classes = (
        select(r.error_code, func.count())
        .where(*_in_window(w), r.error_code.is_not(None))
        .group_by(r.error_code)
        .order_by(func.count().desc())
        .limit(MAX_ERROR_CLASSES)
    )
    return ServiceCounts(
        requests, errors, answered, cut,
        latencies, await _p95(session, w, r.latency_ms, latencies),
        ttfts, await _p95(session, w, r.ttft_ms, ttfts),
        {str(code): int(n) for code, n in await session.execute(classes)},
    )  # fmt: skip


async def _p95(
    session: AsyncSession, w: Window, column: InstrumentedAttribute[Any], n: int
) -> float | None:
    if n == 0:
        return None
    query = (
        select(column)
        .where(*_in_window(w), _ok(), column.is_not(None))
        .order_by(column)
        .offset(quantile_rank(n))
        .limit(1)
    )
    found = await session.scalar(query)
    return None if found is None else float(found)


# --- references -----------------------------------------------------------------------------


async def references(session: AsyncSession, route: str, target: str) -> list[StoredReference]:
    """The version's references on the route: the pinned one first."""
    query = (
        select(DriftReference)
        .where(DriftReference.route == route, DriftReference.target == target)
        .order_by(DriftReference.pinned.desc())
    )
    return [_stored(row) for row in await session.scalars(query)]


async def replace_reference(
    session: AsyncSession,
    w: Window,
    *,
    pinned: bool,
    source: str,
    now: datetime,
    samples: int = 0,
    found: Profile | None = None,
    rollout_id: str | None = None,
    created_by: str | None = None,
) -> None:
    """Write the version's automatic or pinned reference, in place of any there was."""
    await session.execute(
        delete(DriftReference).where(
            DriftReference.route == w.route,
            DriftReference.target == w.target,
            DriftReference.pinned.is_(pinned),
        )
    )
    session.add(
        DriftReference(
            id=secrets.token_hex(16), route=w.route, target=w.target, pinned=pinned,
            source=source, since=w.since, until=w.until, samples=samples, rollout_id=rollout_id,
            profile=found.row() if found is not None else None, created_at=now,
            created_by=created_by,
        )
    )  # fmt: skip
    await session.flush()


async def drop_pinned(session: AsyncSession, route: str, target: str) -> bool:
    result = await session.execute(
        delete(DriftReference).where(
            DriftReference.route == route,
            DriftReference.target == target,
            DriftReference.pinned.is_(True),
        )
    )
    return bool(getattr(result, "rowcount", 0))
