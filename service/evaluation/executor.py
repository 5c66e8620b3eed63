"""Runs evaluations in the gateway: the versions placed on the route's pool, every case sent to
each arm at a bounded concurrency, the figures computed and stored once.

A run is started by the API and answered by the gateway that accepted it, as a background task
(its caller polls the run). While it runs, its versions are wanted on the pool (``runs``), so no
gateway unloads them mid-run; a heartbeat keeps it alive, and each gateway's loop ends the runs
whose gateway stopped beating. At most ``max_runs`` run at once per gateway, each with at most
its ``concurrency`` calls in flight, so an evaluation cannot crowd out live traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.actor import Actor
from service.errors import GatewayError
from service.evaluation import runs
from service.evaluation.cases import Case
from service.evaluation.errors import PackNotFound, RunBusy, RunInvalid
from service.evaluation.scoring import Reply
from service.evaluation.store import read_pack
from service.evaluation.summary import BASELINE, CANDIDATE, run_figures
from service.routes.view import RouteView, Served

log = logging.getLogger(__name__)

STABLE, BASE = "stable", "base"


class Answerer(Protocol):
    async def answer(self, route: RouteView, target: str, case: Case) -> Reply: ...


# Loads a version on every usable replica of a pool and checks it generates, or raises
# (``AdapterReconciler.place``): (pool, version, store path).
Place = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RunRequest:
    route: str
    pack: str  # NAME@N within the route
    candidate: str
    baseline: str | None = STABLE  # stable | base | NAME@M | None
    concurrency: int = 2
    started_by: str | None = None
    audit: Actor | None = None


@dataclass(frozen=True, slots=True)
class RunLimits:
    max_runs: int  # at once, per gateway
    heartbeat_s: float
    stale_after_s: float


class RunExecutor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        snapshot: Served,
        answers: Answerer,
        place: Place,
        base_models: Mapping[str, str],
        limits: RunLimits,
    ) -> None:
        self._sessions = sessions
        self._snapshot = snapshot
        self._answers = answers
        self._place = place
        self._base_models = base_models
        self._limits = limits
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._starting = 0  # starts past the cap check, not yet running: they count too

    @property
    def running(self) -> int:
        """Runs this gateway is answering now."""
        return len(self._tasks)

    async def start(self, request: RunRequest) -> runs.RunInfo:
        """Check the request, write the run ``running`` and start answering its cases."""
        busy = len(self._tasks) + self._starting
        if busy >= self._limits.max_runs:
            raise RunBusy(
                f"this gateway already runs {busy} evaluations (the most at once); try again "
                "when one has ended"
            )
        self._starting += 1
        try:
            return await self._start(request)
        finally:
            self._starting -= 1

    async def _start(self, request: RunRequest) -> runs.RunInfo:
        route = self._route(request.route)
        pack_id = f"{request.route}/{request.pack}"
        async with self._sessions() as session:
            try:
                _, cases = await read_pack(session, pack_id)
            except PackNotFound as exc:
                raise RunInvalid(exc.message) from None
        candidate = self._version(route, request.candidate, "candidate")
        baseline = self._baseline(route, request.baseline, candidate)
        new = runs.NewRun(
            request.route, pack_id, route.pool, candidate, request.baseline, baseline,
            request.concurrency, request.started_by,
        )  # fmt: skip
        run = await runs.start_run(self._sessions, new, request.audit)
        task = asyncio.create_task(self._execute(run, route, cases), name=f"eval-{run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.id, None))
        return run

    def _route(self, name: str) -> RouteView:
        route = self._snapshot.current.routes.get(name)
        if route is None:
            raise RunInvalid(f"no route {name!r}")
        return route

    def _version(self, route: RouteView, version: str, what: str) -> str:
        view = self._snapshot.current.adapters.get(version)
        if view is None:
            raise RunInvalid(f"the {what} {version!r} is not a registered adapter version")
        if view.pool != route.pool:
            raise RunInvalid(
                f"the {what} {version} belongs to pool {view.pool!r}, the route {route.name} "
                f"to {route.pool!r}"
            )
        return version

    def _baseline(self, route: RouteView, ref: str | None, candidate: str) -> str | None:
        if ref is None:
            return None
        if ref == STABLE:
            baseline = route.target
            if baseline == candidate:
                raise RunInvalid(
                    f"{candidate} is the route's stable version already: compare it with "
                    "'base' or another version"
                )
            return baseline
        if ref == BASE:
            return self._base_models[route.pool]
        if ref == candidate:
            raise RunInvalid("the baseline is the candidate itself")
        return self._version(route, ref, "baseline")

    async def _execute(self, run: runs.RunInfo, route: RouteView, cases: list[Case]) -> None:
        beating = asyncio.create_task(self._beat(run.id))
        try:
            arms = {CANDIDATE: run.candidate}
            if run.baseline is not None:
                arms[BASELINE] = run.baseline
            for target in arms.values():
                adapter = self._snapshot.current.adapters.get(target)
                if adapter is not None:
                    await self._place(route.pool, target, adapter.store_path)
            gate = asyncio.Semaphore(run.concurrency)
            answers = {
                arm: await self._answer_all(route, target, cases, gate)
                for arm, target in arms.items()
            }
            figures = run_figures(cases, answers)
            if not await runs.finish_run(self._sessions, run.id, answers, figures):
                log.warning("evaluation run %s had been ended before it finished", run.id)
        except asyncio.CancelledError:
            await self._end(run.id, runs.INTERRUPTED, "the gateway stopped during the run")
            raise
        except GatewayError as error:
            await self._end(run.id, runs.FAILED, error.message)
        except Exception:
            log.exception("evaluation run %s failed inside the gateway", run.id)
            await self._end(run.id, runs.FAILED, "the gateway failed during the run (see its log)")
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def cancel(self, run_id: str, reason: str) -> None:
        """End the run ``interrupted`` with ``reason`` and stop answering it here."""
        await runs.end_run(self._sessions, run_id, runs.INTERRUPTED, reason)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()

    async def _answer_all(
        self, route: RouteView, target: str, cases: Sequence[Case], gate: asyncio.Semaphore
    ) -> list[Reply]:
        async def one(case: Case) -> Reply:
            async with gate:
                return await self._answers.answer(route, target, case)

        return list(await asyncio.gather(*(one(case) for case in cases)))

    async def _end(self, run_id: str, status: str, reason: str) -> None:
        # Shielded: a cancelled run must still be written as ended, or it pins its versions
        # until a sweep finds it stale.
        try:
            await asyncio.shield(runs.end_run(self._sessions, run_id, status, reason))
        except Exception:
            log.exception("could not end evaluation run %s; a sweep will end it", run_id)

    async def _beat(self, run_id: str) -> None:
        while True:
            try:
                if not await runs.beat(self._sessions, run_id):
                    return
            except Exception:
                log.exception("evaluation run %s missed a heartbeat", run_id)
            await asyncio.sleep(self._limits.heartbeat_s)

    async def run(self) -> None:
        """End, every beat, the runs whose gateway stopped beating."""
        stale = timedelta(seconds=self._limits.stale_after_s)
        while True:
            try:
                ended = await runs.sweep_stale(self._sessions, stale)
                if ended:
                    log.warning("%d evaluation runs had lost their gateway: interrupted", ended)
            except Exception:
                log.exception("sweeping stale evaluation runs failed; trying again")
            await asyncio.sleep(self._limits.heartbeat_s)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
