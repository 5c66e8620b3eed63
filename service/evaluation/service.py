"""The evaluation workflows every surface (API, CLI) calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.actor import Actor
from service.db.models import Route
from service.evaluation.cases import Case
from service.evaluation.errors import PackInvalid
from service.evaluation.from_reviews import ReviewWindow, reviewed_cases
from service.evaluation.report import render
from service.evaluation.runs import as_dict, get_run, run_answers
from service.evaluation.store import CreatedPack, check_name, create_pack, read_pack


@dataclass(frozen=True, slots=True)
class PackRequest:
    route: str
    name: str
    cases: Sequence[Case] = ()  # given (a JSONL file, the API body)
    from_reviews: ReviewWindow | None = None  # and/or the route's reviewed items
    created_by: str | None = None
    audit: Actor | None = None


@dataclass(frozen=True, slots=True)
class PackOutcome:
    created: CreatedPack
    report: dict[str, Any]  # what was taken from where, and what was left out


async def make_pack(
    sessions: async_sessionmaker[AsyncSession], request: PackRequest
) -> PackOutcome:
    """Gather the cases, leave out repeats and what training already took, write the version."""
    check_name(request.name)
    if not request.cases and request.from_reviews is None:
        raise PackInvalid("no cases: give cases (a JSONL file) and/or take them from reviews")
    report: dict[str, Any] = {"given": len(request.cases)}
    cases = list(request.cases)
    async with sessions() as session:
        await _check_route(session, request.route)
        if request.from_reviews is not None:
            reviewed = await reviewed_cases(session, request.route, request.from_reviews)
            report["reviews"] = reviewed.report()
            cases += reviewed.cases
    unique = list({case.canonical(): case for case in cases}.values())
    report["duplicates_removed"] = len(cases) - len(unique)
    if not unique:
        raise PackInvalid(f"no usable cases for {request.route}: {report}")
    created = await create_pack(
        sessions, request.route, request.name, unique, sources=report,
        created_by=request.created_by, audit=request.audit,
    )  # fmt: skip
    return PackOutcome(created, report)


async def _check_route(session: AsyncSession, route: str) -> None:
    if await session.scalar(select(Route.name).where(Route.name == route)) is None:
        raise PackInvalid(f"no route {route!r}: a pack belongs to an existing route")


async def run_page(session: AsyncSession, run_id: str) -> str:
    """The run's HTML report (``report.render``) with its pack's cases and its answers."""
    run = await get_run(session, run_id)
    _, cases = await read_pack(session, run.pack_id)
    return render(as_dict(run), cases, await run_answers(session, run_id))
