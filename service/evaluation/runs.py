"""Evaluation runs in the database: start, beat, end, read, and what running ones keep wanted.

A run is written ``running`` before its first case is sent and ends exactly once (``done``,
``failed`` or ``interrupted``): every end is a conditional update from ``running``, so a run
that a sweep took for dead cannot be ended again by its late gateway. While it runs, its
gateway writes ``heartbeat_at``; a run whose beat is older than ``stale_after`` is ended
``interrupted`` by the next sweep of any gateway, and stops keeping its versions loaded.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import clock
from service.audit.actor import Actor
from service.audit.events import record_event
from service.db.evaluation_models import EvalAnswer, EvalRun
from service.db.session import write_transaction
from service.evaluation.errors import RunNotFound
from service.evaluation.scoring import Reply

RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: str
    route: str
    pack_id: str
    pool: str
    candidate: str
    baseline_ref: str | None  # what was asked: stable, base, a version, or none
    baseline: str | None  # what it named when the run started
    concurrency: int
    status: str
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    started_by: str | None
    figures: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class NewRun:
    route: str
    pack_id: str
    pool: str
    candidate: str
    baseline_ref: str | None
    baseline: str | None
    concurrency: int
    started_by: str | None


async def start_run(
    sessions: async_sessionmaker[AsyncSession], new: NewRun, audit: Actor | None
) -> RunInfo:
    at = clock.now()
    row = EvalRun(
        id=f"run_{secrets.token_hex(8)}", route=new.route, pack_id=new.pack_id, pool=new.pool,
        candidate=new.candidate, baseline_ref=new.baseline_ref, baseline=new.baseline,
        concurrency=new.concurrency, status=RUNNING, created_at=at, heartbeat_at=at,
        started_by=new.started_by,
    )  # fmt: skip
    async with write_transaction(sessions) as session:
        session.add(row)
        if audit is not None:
            await record_event(
                session, audit, "eval.run.start", f"eval_run:{row.id}",
                after={"pack": new.pack_id, "candidate": new.candidate,
                       "baseline": new.baseline},
            )  # fmt: skip
    return _info(row)


async def beat(sessions: async_sessionmaker[AsyncSession], run_id: str) -> bool:
    """Mark the run alive; False once it is no longer running (a sweep ended it)."""
    async with write_transaction(sessions) as session:
        moved = await session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.status == RUNNING)
            .values(heartbeat_at=clock.now())
        )
    return bool(getattr(moved, "rowcount", 0))


async def finish_run(
    sessions: async_sessionmaker[AsyncSession],
    run_id: str,
    answers: Mapping[str, Sequence[Reply]],
    figures: dict[str, Any],
) -> bool:
    """Store every answer and the figures and end the run ``done``; False (nothing written)
    when it was no longer running."""
    async with write_transaction(sessions) as session:
        if not await _end(session, run_id, DONE, None, figures):
            return False
        session.add_all(
            _answer_row(run_id, arm, position, reply)
            for arm, replies in answers.items()
            for position, reply in enumerate(replies)
        )
    return True


async def end_run(
    sessions: async_sessionmaker[AsyncSession], run_id: str, status: str, reason: str
) -> bool:
    """End a running run ``failed`` or ``interrupted`` with its reason."""
    async with write_transaction(sessions) as session:
        return await _end(session, run_id, status, reason, None)


async def _end(
    session: AsyncSession,
    run_id: str,
    status: str,
    reason: str | None,
    figures: dict[str, Any] | None,
) -> bool:
    moved = await session.execute(
        update(EvalRun)
        .where(EvalRun.id == run_id, EvalRun.status == RUNNING)
        .values(status=status, reason=reason, figures=figures, finished_at=clock.now())
    )
    return bool(getattr(moved, "rowcount", 0))


async def sweep_stale(sessions: async_sessionmaker[AsyncSession], stale_after: timedelta) -> int:
    """End ``interrupted`` every running run whose gateway stopped beating; how many."""
    async with write_transaction(sessions) as session:
        moved = await session.execute(
            update(EvalRun)
            .where(EvalRun.status == RUNNING, EvalRun.heartbeat_at < clock.now() - stale_after)
            .values(
                status=INTERRUPTED,
                reason="its gateway stopped before the run ended; start it again",
                finished_at=clock.now(),
            )
        )
    return int(getattr(moved, "rowcount", 0))


async def evaluating(session: AsyncSession) -> dict[str, frozenset[str]]:
    """Per pool, the versions running evaluations answer with (for the gateways' snapshot)."""
    rows = await session.execute(
        select(EvalRun.pool, EvalRun.candidate, EvalRun.baseline).where(EvalRun.status == RUNNING)
    )
    wanted: dict[str, set[str]] = defaultdict(set)
    for pool, candidate, baseline in rows:
        wanted[pool].add(candidate)
        if baseline is not None:
            wanted[pool].add(baseline)
    return {pool: frozenset(versions) for pool, versions in wanted.items()}


async def get_run(session: AsyncSession, run_id: str) -> RunInfo:
    row = await session.get(EvalRun, run_id)
    if row is None:
        raise RunNotFound(f"no evaluation run {run_id!r}")
    return _info(row)


async def list_runs(session: AsyncSession, route: str | None, limit: int = 100) -> list[RunInfo]:
    query = select(EvalRun).order_by(EvalRun.created_at.desc(), EvalRun.id).limit(limit)
    if route is not None:
        query = query.where(EvalRun.route == route)
    return [_info(row) for row in await session.scalars(query)]


async def run_answers(session: AsyncSession, run_id: str) -> dict[str, list[Reply]]:
    """Each arm's replies in the pack's case order."""
    rows = await session.scalars(
        select(EvalAnswer).where(EvalAnswer.run_id == run_id).order_by(EvalAnswer.position)
    )
    replies: dict[str, list[Reply]] = defaultdict(list)
    for row in rows:
        reply = Reply(
            row.answer, row.error, row.schema_valid, row.escalated, row.confidence,
            row.latency_ms, row.prompt_tokens, row.completion_tokens,
        )  # fmt: skip
        replies[row.arm].append(reply)
    return dict(replies)


def _answer_row(run_id: str, arm: str, position: int, reply: Reply) -> EvalAnswer:
    return EvalAnswer(
        run_id=run_id, arm=arm, position=position, answer=reply.text, error=reply.error,
        schema_valid=reply.schema_valid, escalated=reply.escalated, confidence=reply.confidence,
        latency_ms=reply.latency_ms, prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
    )  # fmt: skip


def _info(row: EvalRun) -> RunInfo:
    return RunInfo(
        id=row.id, route=row.route, pack_id=row.pack_id, pool=row.pool, candidate=row.candidate,
        baseline_ref=row.baseline_ref, baseline=row.baseline, concurrency=row.concurrency,
        status=row.status, reason=row.reason, created_at=clock.as_utc(row.created_at),
        finished_at=clock.as_utc(row.finished_at) if row.finished_at else None,
        started_by=row.started_by, figures=row.figures,
    )  # fmt: skip


def as_dict(info: RunInfo) -> dict[str, Any]:
    """The run as the CLI and the report read it (the API's field names)."""
    return {
        "id": info.id, "route": info.route, "pack": info.pack_id, "candidate": info.candidate,
        "baseline": info.baseline, "baseline_ref": info.baseline_ref, "status": info.status,
        "reason": info.reason, "created_at": info.created_at.isoformat(),
        "figures": info.figures,
    }  # fmt: skip


async def runs_of_version(session: AsyncSession, version: str) -> list[RunInfo]:
    """Every run with ``version`` as the candidate or the baseline, the oldest first."""
    query = (
        select(EvalRun)
        .where((EvalRun.candidate == version) | (EvalRun.baseline == version))
        .order_by(EvalRun.created_at)
    )
    return [_info(row) for row in await session.scalars(query)]
