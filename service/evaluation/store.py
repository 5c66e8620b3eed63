"""Evaluation packs in the database: create a version, list, read, and a route's held-out inputs.

A pack ``route/name@N`` never changes once written. Creating one with the same cases as the
newest version of that name returns that version (the content names it); different cases make
version N+1. The version is taken under the write lock (SQLite) or the unique constraint
(PostgreSQL: a concurrent creator of the same name gets ``PackConflict`` and may try again).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import clock
from service.audit.actor import Actor
from service.audit.events import record_event
from service.db.evaluation_models import EvalCase, EvalPack
from service.db.session import write_transaction
from service.evaluation.cases import (
    NAME_PATTERN,
    Case,
    CaseKind,
    kind_counts,
    pack_sha256,
    prompt_of,
)
from service.evaluation.errors import PackConflict, PackInvalid, PackNotFound
from service.evaluation.leakage import HeldOut

REF = re.compile(r"^(?P<route>[^/@\s]+)/(?P<name>[^/@\s]+)@(?P<version>[1-9][0-9]{0,8})$")
NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class PackInfo:
    id: str  # route/name@version
    route: str
    name: str
    version: int
    sha256: str
    created_at: datetime  # UTC
    created_by: str | None
    cases: int
    kinds: dict[str, int]
    sources: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CreatedPack:
    pack: PackInfo
    created: bool  # False: the newest version of that name already held these cases


def parse_ref(ref: str) -> tuple[str, str, int]:
    """``route/name@N`` as (route, name, N); ``PackInvalid`` with the expected form otherwise."""
    found = REF.match(ref)
    if found is None:
        raise PackInvalid(f"{ref!r} is not a pack reference: give ROUTE/NAME@N, e.g. triage/gold@1")
    return found["route"], found["name"], int(found["version"])


def check_name(name: str) -> None:
    if NAME.match(name) is None:
        raise PackInvalid(
            f"{name!r} is not a pack name: lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )


async def create_pack(
    sessions: async_sessionmaker[AsyncSession],
    route: str,
    name: str,
    cases: Sequence[Case],
    *,
    sources: dict[str, Any],
    created_by: str | None,
    audit: Actor | None,
) -> CreatedPack:
    check_name(name)
    if not cases:
        raise PackInvalid("a pack needs at least one case")
    digest = pack_sha256(cases)
    try:
        async with write_transaction(sessions) as session:
            newest = await session.scalar(
                select(EvalPack)
                .where(EvalPack.route == route, EvalPack.name == name)
                .order_by(EvalPack.version.desc())
                .limit(1)
            )
            if newest is not None and newest.sha256 == digest:
                return CreatedPack(_info(newest), created=False)
            version = 1 if newest is None else newest.version + 1
            row = EvalPack(
                id=f"{route}/{name}@{version}", route=route, name=name, version=version,
                sha256=digest, created_at=clock.now(), created_by=created_by, cases=len(cases),
                kinds=kind_counts(cases), sources=sources,
            )  # fmt: skip
            session.add(row)
            session.add_all(_case_row(row.id, i, case) for i, case in enumerate(cases))
            if audit is not None:
                await record_event(
                    session, audit, "eval.pack.create", f"eval_pack:{row.id}",
                    after={"sha256": digest, "cases": len(cases), "kinds": row.kinds},
                )  # fmt: skip
            await session.flush()
            return CreatedPack(_info(row), created=True)
    except IntegrityError:
        raise PackConflict(
            f"another pack {route}/{name} was created at the same time; try again"
        ) from None


def _case_row(pack_id: str, position: int, case: Case) -> EvalCase:
    return EvalCase(
        pack_id=pack_id, position=position, kind=case.kind.value,
        messages=[dict(m) for m in case.messages], expected=case.expected,
        fields=list(case.fields) if case.fields is not None else None,
        slices=dict(case.slices), review_item_id=case.review_item_id,
    )  # fmt: skip


def _info(row: EvalPack) -> PackInfo:
    return PackInfo(
        id=row.id, route=row.route, name=row.name, version=row.version, sha256=row.sha256,
        created_at=clock.as_utc(row.created_at), created_by=row.created_by, cases=row.cases,
        kinds=dict(row.kinds), sources=dict(row.sources),
    )  # fmt: skip


async def list_packs(session: AsyncSession, route: str | None = None) -> list[PackInfo]:
    query = select(EvalPack).order_by(EvalPack.route, EvalPack.name, EvalPack.version)
    if route is not None:
        query = query.where(EvalPack.route == route)
    return [_info(row) for row in await session.scalars(query)]


async def read_pack(session: AsyncSession, ref: str) -> tuple[PackInfo, list[Case]]:
    """The pack ``ref`` names and its cases in their order; ``PackNotFound`` if none."""
    route, name, version = parse_ref(ref)
    row = await session.get(EvalPack, f"{route}/{name}@{version}")
    if row is None:
        latest = await session.scalar(
            select(func.max(EvalPack.version)).where(EvalPack.route == route, EvalPack.name == name)
        )
        known = f" (the newest is @{latest})" if latest is not None else ""
        raise PackNotFound(f"no evaluation pack {ref}{known}")
    rows = await session.scalars(
        select(EvalCase).where(EvalCase.pack_id == row.id).order_by(EvalCase.position)
    )
    return _info(row), [_case(c) for c in rows]


def _case(row: EvalCase) -> Case:
    return Case(
        messages=tuple(row.messages), expected=row.expected, kind=CaseKind(row.kind),
        slices=dict(row.slices), fields=tuple(row.fields) if row.fields is not None else None,
        review_item_id=row.review_item_id,
    )  # fmt: skip


async def held_out(session: AsyncSession, routes: Sequence[str] | None) -> HeldOut:
    """The inputs of every pack of ``routes`` (of every route when ``None``)."""
    query = select(EvalCase.messages).join(EvalPack, EvalPack.id == EvalCase.pack_id)
    if routes is not None:
        query = query.where(EvalPack.route.in_(list(routes)))
    rows = await session.scalars(query)
    return HeldOut(prompt_of(messages) for messages in rows)


async def newest_pack(session: AsyncSession, route: str) -> str | None:
    """``name@N`` of the route's most recently written pack version, or None."""
    row = await session.scalar(
        select(EvalPack)
        .where(EvalPack.route == route)
        .order_by(EvalPack.created_at.desc(), EvalPack.version.desc())
        .limit(1)
    )
    return None if row is None else f"{row.name}@{row.version}"
