"""Where every gateway counts: the database (SQLite or PostgreSQL) or Redis when configured.

Both count first and judge after: a request is added to its scopes' counters, the counts are
judged, and a refused request is taken out again. On the database the adding and judging are one
transaction that is rolled back on refusal; the upsert locks the scope's row for the minute, so
requests of one key are judged one after the other and a limit is never exceeded. On Redis one
script adds atomically and another takes back; a request judged while another's count is briefly
in can be refused where a strict order would have let it in, never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db.models import RateLease, RateWindow
from service.limits.quota import Scope, Window

WINDOWS = cast(Table, RateWindow.__table__)
LEASES = cast(Table, RateLease.__table__)


@dataclass(frozen=True, slots=True)
class Seen:
    """One scope's counts just before this request was added to them."""

    scope: Scope
    requests: Window
    tokens: Window
    in_flight: int


@dataclass(frozen=True, slots=True)
class Taking:
    """What a request takes: one request and ``tokens`` in ``minute``, and, in scopes with a
    concurrency limit, a lease until ``expires_at`` (epoch seconds)."""

    scopes: Sequence[Scope]
    minute: int
    tokens: int
    lease: str
    now_s: float
    expires_at: float


class Counters(Protocol):
    async def take(self, taking: Taking, judge: Callable[[list[Seen]], bool]) -> bool:
        """Add the request, judge what was seen; keep it if ``judge`` says so, else undo."""
        ...

    async def give_back(self, taking: Taking, token_change: int) -> None:
        """End the request: free its lease and correct its tokens by ``token_change``."""
        ...

    async def close(self) -> None: ...


def _upsert(conn: AsyncConnection, values: dict[str, Any]) -> Any:
    dialect = conn.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(WINDOWS).values(values)
    return statement.on_conflict_do_update(
        index_elements=[WINDOWS.c.scope, WINDOWS.c.minute],
        set_={
            "requests": WINDOWS.c.requests + statement.excluded.requests,
            "tokens": WINDOWS.c.tokens + statement.excluded.tokens,
        },
    ).returning(WINDOWS.c.requests, WINDOWS.c.tokens)


class DatabaseCounters:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db
        # SQLite has one writer: this gateway's own transactions queue here instead of meeting
        # in SQLite's busy handler, whose sleeps grow to 100 ms (measured: 8 clients of one key
        # got 36 answers a second without it).
        self._one_writer: AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if db.dialect.name == "sqlite" else nullcontext()
        )

    async def take(self, taking: Taking, judge: Callable[[list[Seen]], bool]) -> bool:
        async with self._one_writer, self._db.connect() as conn:
            transaction = await conn.begin()
            try:
                seen = [await self._add(conn, scope, taking) for scope in taking.scopes]
                if judge(seen):
                    await transaction.commit()
                    return True
            finally:
                if transaction.is_active:
                    await transaction.rollback()
        return False

    @staticmethod
    async def _add(conn: AsyncConnection, scope: Scope, taking: Taking) -> Seen:
        row = {"scope": scope.name, "minute": taking.minute, "requests": 1, "tokens": taking.tokens}
        requests, tokens = (await conn.execute(_upsert(conn, row))).one()
        here = WINDOWS.c.scope == scope.name
        before = (
            await conn.execute(
                select(WINDOWS.c.requests, WINDOWS.c.tokens).where(
                    here, WINDOWS.c.minute == taking.minute - 1
                )
            )
        ).first()
        await conn.execute(delete(WINDOWS).where(here, WINDOWS.c.minute < taking.minute - 1))
        in_flight = 0
        if scope.quota.max_concurrent is not None:
            leased = LEASES.c.scope == scope.name
            await conn.execute(delete(LEASES).where(leased, LEASES.c.expires_at <= taking.now_s))
            in_flight = int(
                await conn.scalar(select(func.count()).select_from(LEASES).where(leased)) or 0
            )
            await conn.execute(
                LEASES.insert().values(
                    scope=scope.name, lease=taking.lease, expires_at=taking.expires_at
                )
            )
        previous = (int(before[0]), int(before[1])) if before is not None else (0, 0)
        return Seen(
            scope,
            Window(previous[0], int(requests) - 1),
            Window(previous[1], int(tokens) - taking.tokens),
            in_flight,
        )

    async def give_back(self, taking: Taking, token_change: int) -> None:
        names = [scope.name for scope in taking.scopes]
        async with self._one_writer, self._db.begin() as conn:
            if token_change:
                await conn.execute(
                    WINDOWS.update()
                    .where(WINDOWS.c.scope.in_(names), WINDOWS.c.minute == taking.minute)
                    .values(tokens=WINDOWS.c.tokens + token_change)
                )
            await conn.execute(
                delete(LEASES).where(LEASES.c.scope.in_(names), LEASES.c.lease == taking.lease)
            )

    async def close(self) -> None:
        return None


class LocalCounters:
    """This gateway's own counts, in memory: the backstop while the shared store cannot be
    reached. Each gateway then holds every limit on its own (N gateways let up to N times a
    limit through), instead of none. One event loop: a take runs without a pause, so it is
    atomic."""

    def __init__(self) -> None:
        self._windows: dict[str, dict[int, list[int]]] = {}  # scope -> minute -> [requests, tokens]
        self._leases: dict[str, dict[str, float]] = {}  # scope -> lease -> expires_at

    async def take(self, taking: Taking, judge: Callable[[list[Seen]], bool]) -> bool:
        seen = [self._add(scope, taking) for scope in taking.scopes]
        if judge(seen):
            return True
        await self.give_back(taking, -taking.tokens, requests=-1)
        return False

    def _add(self, scope: Scope, taking: Taking) -> Seen:
        minutes = self._windows.setdefault(scope.name, {})
        for old in [m for m in minutes if m < taking.minute - 1]:
            del minutes[old]
        previous = minutes.get(taking.minute - 1, [0, 0])
        current = minutes.setdefault(taking.minute, [0, 0])
        before = list(current)
        current[0] += 1
        current[1] += taking.tokens
        in_flight = 0
        if scope.quota.max_concurrent is not None:
            leases = self._leases.setdefault(scope.name, {})
            for lease in [k for k, until in leases.items() if until <= taking.now_s]:
                del leases[lease]
            in_flight = len(leases)
            leases[taking.lease] = taking.expires_at
        return Seen(
            scope, Window(previous[0], before[0]), Window(previous[1], before[1]), in_flight
        )

    async def give_back(self, taking: Taking, token_change: int, requests: int = 0) -> None:
        for scope in taking.scopes:
            counts = self._windows.get(scope.name, {}).get(taking.minute)
            if counts is not None:
                counts[0] += requests
                counts[1] += token_change
            self._leases.get(scope.name, {}).pop(taking.lease, None)

    async def close(self) -> None:
        return None
