"""Evaluation runs as a rollout's evaluate step uses them (``rollout.control.Evaluations``)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rollout.core.evaluation_gate import EvalResult
from rollout.core.spec import Evaluation
from service.evaluation.errors import PackNotFound, RunInvalid
from service.evaluation.executor import BASE, STABLE, RunExecutor, RunRequest
from service.evaluation.runs import get_run
from service.evaluation.store import newest_pack, read_pack

# The evaluate step's calls in flight: below a person's default, it runs beside live traffic.
CONCURRENCY = 2


class RolloutEvaluations:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], executor: RunExecutor) -> None:
        self._sessions = sessions
        self._executor = executor

    async def check(self, route: str, spec: Evaluation) -> None:
        if spec.pack is not None:
            async with self._sessions() as session:
                try:
                    await read_pack(session, f"{route}/{spec.pack}")
                except PackNotFound as exc:
                    raise RunInvalid(f"evaluation.pack: {exc.message}") from None
        if spec.baseline not in (STABLE, BASE) and "@" not in spec.baseline:
            raise RunInvalid("evaluation.baseline is 'stable', 'base' or a version NAME@M")

    async def start(self, route: str, candidate: str, spec: Evaluation) -> str | None:
        pack = spec.pack
        if pack is None:
            async with self._sessions() as session:
                pack = await newest_pack(session, route)
        if pack is None:
            return None
        request = RunRequest(
            route=route, pack=pack, candidate=candidate, baseline=spec.baseline,
            concurrency=CONCURRENCY, started_by="rollout",
        )  # fmt: skip
        return (await self._executor.start(request)).id

    async def result(self, run_id: str) -> EvalResult:
        async with self._sessions() as session:
            run = await get_run(session, run_id)
        return EvalResult(run.id, run.status, run.reason, run.baseline, run.figures)

    async def cancel(self, run_id: str, reason: str) -> None:
        await self._executor.cancel(run_id, reason)
