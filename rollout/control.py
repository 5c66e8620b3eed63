"""Rollouts at work: SRE commands, and the analysis loop every gateway replica runs.

Each tick reads the active rollouts, judges each one's current step once on its window of
request records (the state machine moves on those verdicts, which are saved with the figures),
and saves the next state with its event in one transaction, guarded by the row's version:
when two replicas tick the same rollout, one save wins and the other is discarded.
Promotion switches the route's target in that same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker

from monitoring.metrics import Metrics
from rollout import store as rollout_store
from rollout.core import evaluation_gate
from rollout.core.evaluation_gate import EvalResult
from rollout.core.figures import Window
from rollout.core.gates import GateResult, judge, latency_alpha
from rollout.core.machine import (
    RUNNING,
    Command,
    NotAllowed,
    Outcome,
    Phase,
    State,
    command,
    tick,
    traffic,
)
from rollout.core.spec import Evaluation, GateName, RolloutSpec, StepKind
from rollout.core.split import Arm
from rollout.core.verdicts import Verdict
from rollout.store import RouteBusy, SavedFigures, StaleRollout, StoredEvent, StoredRollout
from service.audit.actor import Actor
from service.audit.events import record_event
from service.clock import Clock, now
from service.drift.monitor import freeze_on_promotion
from service.engine.client import EngineClient
from service.engine.reconciler import AdapterReconciler
from service.errors import GatewayError, InvalidRequest, RolloutConflict, RolloutNotFound
from service.guard.output_fields import FieldKind
from service.routes import switch
from service.routes.snapshot import SnapshotStore
from service.routes.targets import get_route

log = logging.getLogger(__name__)
# A command that keeps losing to concurrent writers gives up after this many tries.
COMMAND_TRIES = 5


EVALUATION_PHASES = frozenset({Phase.PENDING, Phase.EVALUATING})
TRY_AGAIN = 429  # a gateway error that says "later", not "never"


class Evaluations(Protocol):
    """Offline evaluation runs, as the evaluate step uses them (``service.evaluation``)."""

    async def check(self, route: str, spec: Evaluation) -> None:
        """Raise a 400 error when ``spec`` names a pack or baseline the route cannot use."""
        ...

    async def start(self, route: str, candidate: str, spec: Evaluation) -> str | None:
        """Start a run of the route's pack; its id, or None when the route has no pack."""
        ...

    async def result(self, run_id: str) -> EvalResult: ...

    async def cancel(self, run_id: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Analysis:
    """The current step's window judged now: figures per arm and each gate's verdict."""

    rollout: StoredRollout
    since: datetime
    window: Window
    verdicts: tuple[GateResult, ...]

    def figures(self, at: datetime) -> SavedFigures:
        return SavedFigures(at, self.since, self.window.stable, self.window.candidate)


class RolloutControl:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        snapshot: SnapshotStore,
        engines: EngineClient,
        reconciler: AdapterReconciler,
        metrics: Metrics,
        *,
        clock: Clock = now,
        interval_s: float,
        evaluations: Evaluations | None = None,
    ) -> None:
        self._sessions = sessions
        self._snapshot = snapshot
        self._engines = engines
        self._reconciler = reconciler
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._evaluations = evaluations

    # --- commands -------------------------------------------------------------------------

    async def start(
        self,
        route_name: str,
        spec: RolloutSpec,
        actor: str,
        created_by: str | None = None,
        audit: Actor | None = None,
    ) -> StoredRollout:
        """Start rolling ``spec.candidate`` out on the route; the same request again is a no-op.
        A start made for ``audit`` is audited in its transaction."""
        async with self._sessions() as session:
            route = await get_route(session, route_name)
            existing = await rollout_store.active_for_route(session, route_name)
            if existing is not None:
                return self._same_or_conflict(existing, spec)
            if spec.candidate == route.target:
                raise InvalidRequest(f"'{spec.candidate}' is already the route's stable target.")
            candidate = await switch.check_target(session, route, spec.candidate)
        if self._evaluations is not None and spec.evaluation.enabled:
            await self._evaluations.check(route_name, spec.evaluation)
        # Load the candidate on every replica (each must generate with it) before any traffic
        # can reach it.
        await switch.place(candidate, self._engines, self._reconciler)
        rollout_id = secrets.token_hex(8)
        now = self._clock()
        try:
            async with self._sessions.begin() as session:
                await rollout_store.insert(
                    session, rollout_id=rollout_id, route=route_name, stable=route.target,
                    spec=spec, state=State.new(now), actor=actor, created_by=created_by, now=now,
                )  # fmt: skip
                if audit is not None:
                    await record_event(
                        session, audit, "rollout.start", f"rollout:{rollout_id}",
                        after={"route": route_name, "stable": route.target,
                               "candidate": spec.candidate, "phase": State.new(now).phase.value},
                    )  # fmt: skip
        except RouteBusy:
            async with self._sessions() as session:
                existing = await rollout_store.active_for_route(session, route_name)
            if existing is None:
                raise
            return self._same_or_conflict(existing, spec)
        log.info(
            "rollout %s started on route %s: %s -> %s",
            rollout_id,
            route_name,
            route.target,
            spec.candidate,
        )
        await self._snapshot.reload()
        return await self._get(rollout_id)

    @staticmethod
    def _same_or_conflict(existing: StoredRollout, spec: RolloutSpec) -> StoredRollout:
        if existing.spec == spec:
            return existing
        raise RolloutConflict(
            f"The route '{existing.route}' already rolls out '{existing.candidate}' "
            f"({existing.state.phase.value}); abort or promote it first."
        )

    async def command(
        self, route_name: str, cmd: Command, actor: str, reason: str, audit: Actor | None = None
    ) -> StoredRollout:
        """Apply a command to the route's latest rollout. Idempotent; 409 where it does not fit.
        A command that changes the rollout, made for ``audit``, is audited in its transaction."""
        for _ in range(COMMAND_TRIES):
            async with self._sessions() as session:
                await get_route(session, route_name)
                current = await rollout_store.latest_for_route(session, route_name)
            if current is None:
                raise RolloutNotFound(f"The route '{route_name}' has no rollout.")
            try:
                outcome = command(current.state, current.spec, cmd, actor, reason, self._clock())
            except NotAllowed as exc:
                raise RolloutConflict(f"Rollout {current.id}: {exc}.") from exc
            if not outcome.changed:
                return current
            try:
                await self._save(current, outcome, verdicts=None, audit=(audit, cmd, reason))
            except StaleRollout:
                continue  # something else moved it; read again and re-decide
            except RouteBusy as exc:
                raise RolloutConflict(
                    f"The route '{route_name}' has another active rollout; it cannot be retried."
                ) from exc
            await self._snapshot.reload()
            return await self._get(current.id)
        raise RolloutConflict("The rollout kept changing under this command; try again.")

    # --- analysis -------------------------------------------------------------------------

    async def analyse(self, rollout: StoredRollout) -> Analysis:
        """Judge the rollout's current step now, without changing anything."""
        state = rollout.state
        step = rollout.spec.steps[min(state.step, len(rollout.spec.steps) - 1)]
        arm = Arm.SHADOW if step.kind is StepKind.SHADOW else Arm.CANARY
        since = state.step_started_at
        fields = self._output_fields(rollout)
        async with self._sessions() as session:
            window = await rollout_store.window(
                session, rollout, since, arm, fields, latency_alpha(rollout.spec)
            )
        return Analysis(rollout, since, window, judge(rollout.spec, step, window))

    def _output_fields(self, rollout: StoredRollout) -> tuple[str, ...]:
        """The answer fields the output_drift gate compares (none without that gate)."""
        if GateName.OUTPUT_DRIFT not in rollout.spec.gates:
            return ()
        named = rollout.spec.thresholds.output_drift_fields
        if named is not None:
            return named
        route = self._snapshot.current.routes.get(rollout.route)
        binned = route.contract.binned if route is not None and route.contract else {}
        return tuple(name for name, kind in binned.items() if kind is FieldKind.CATEGORY)

    async def tick_all(self) -> None:
        async with self._sessions() as session:
            rollouts = await rollout_store.active(session)
        for rollout in rollouts:
            try:
                await self.tick_one(rollout)
            except StaleRollout:
                log.debug("rollout %s was advanced elsewhere; skipped", rollout.id)
        async with self._sessions() as session:
            self.publish(await rollout_store.latest_per_route(session))

    async def tick_one(self, rollout: StoredRollout) -> Outcome:
        if rollout.state.phase in EVALUATION_PHASES:
            return await self._tick_evaluation(rollout)
        analysis = await self.analyse(rollout)
        outcome = tick(rollout.state, rollout.spec, analysis.verdicts, self._clock())
        # The verdicts saved are those the tick went by: none unless a step was running.
        verdicts = analysis.verdicts if rollout.state.phase in RUNNING else ()
        if outcome.changed or outcome.state != rollout.state or verdicts:
            figures = analysis.figures(self._clock()) if verdicts else None
            await self._save(rollout, outcome, verdicts=verdicts, figures=figures)
        if outcome.changed:
            await self._snapshot.reload()
        return outcome

    async def _tick_evaluation(self, rollout: StoredRollout) -> Outcome:
        """Pending or evaluating: start the evaluation run, or judge it, and tick on that."""
        state, verdicts, started = await self._evaluation(rollout)
        outcome = tick(state, rollout.spec, verdicts, self._clock())
        if outcome.changed or outcome.state != rollout.state or verdicts:
            try:
                await self._save(rollout, outcome, verdicts=verdicts)
            except StaleRollout:
                if started is not None:  # another gateway moved it first: this run is spare
                    await self._cancel(started, "another gateway started this rollout's run")
                raise
        if outcome.changed:
            await self._snapshot.reload()
        return outcome

    async def _evaluation(
        self, rollout: StoredRollout
    ) -> tuple[State, tuple[GateResult, ...], str | None]:
        """The state to tick from (with its run, once started), the evaluation's verdicts (none:
        no evaluation, the first step comes next) and the run this call started, if any."""
        state, spec = rollout.state, rollout.spec.evaluation
        pending = state.phase is Phase.PENDING
        if self._evaluations is None or not spec.enabled:
            return state, () if pending else (self._skipped("evaluation is off"),), None
        if state.evaluation_run is not None:
            result = await self._evaluations.result(state.evaluation_run)
            return state, evaluation_gate.judge(spec, result), None
        try:
            run_id = await self._evaluations.start(rollout.route, rollout.candidate, spec)
        except GatewayError as error:
            verdict = Verdict.INCONCLUSIVE if error.status == TRY_AGAIN else Verdict.FAIL
            failed = GateResult(
                GateName.EVALUATION, verdict, None, None, 0.0,
                f"the evaluation could not start: {error.message}",
            )  # fmt: skip
            return state, (failed,), None
        if run_id is None:
            skipped = self._skipped("the route has no evaluation pack")
            return state, () if pending else (skipped,), None
        running = evaluation_gate.judge(spec, EvalResult(run_id, "running"))
        return replace(state, evaluation_run=run_id), running, run_id

    @staticmethod
    def _skipped(why: str) -> GateResult:
        return GateResult(GateName.EVALUATION, Verdict.PASS, None, None, 0.0, f"{why}: skipped")

    async def _cancel(self, run_id: str, reason: str) -> None:
        assert self._evaluations is not None
        try:
            await self._evaluations.cancel(run_id, reason)
        except Exception:
            log.exception("could not cancel evaluation run %s; its heartbeat sweep ends it", run_id)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick_all()
            except Exception:
                # A database hiccup must not stop the loop; the next tick tries again.
                log.exception("rollout analysis tick failed")

    # --- persistence ----------------------------------------------------------------------

    async def _save(
        self,
        current: StoredRollout,
        outcome: Outcome,
        verdicts: tuple[GateResult, ...] | None,
        figures: SavedFigures | None = None,
        audit: tuple[Actor | None, Command, str] | None = None,
    ) -> None:
        now = self._clock()
        async with self._sessions.begin() as session:
            await rollout_store.save(
                session, current, outcome.state, outcome.event, verdicts, now, figures
            )
            if outcome.state.phase is Phase.PROMOTED and outcome.changed:
                await switch.point(session, current.route, current.candidate, now)
                await freeze_on_promotion(
                    session, current.route, current.candidate, current.id, current.created_at, now
                )
            actor, cmd, reason = audit if audit is not None else (None, None, "")
            if actor is not None and cmd is not None:  # last: it locks the audit chain's head
                await record_event(
                    session, actor, f"rollout.{cmd.value}", f"rollout:{current.id}",
                    before={"phase": current.state.phase.value, "step": current.state.step},
                    after={"phase": outcome.state.phase.value, "step": outcome.state.step,
                           "reason": reason},
                )  # fmt: skip
        event = outcome.event
        if event is None:
            return
        self._metrics.rollout_transitions.labels(current.route, event.kind).inc()
        if event.to_phase is Phase.ROLLED_BACK:
            log.warning(
                "rollout %s of route %s rolled back (%s stays stable, %s out): %s",
                current.id, current.route, current.stable, current.candidate, event.reason,
            )  # fmt: skip
        else:
            log.info(
                "rollout %s of route %s: %s (%s)",
                current.id,
                current.route,
                event.kind,
                event.reason,
            )

    async def _get(self, rollout_id: str) -> StoredRollout:
        async with self._sessions() as session:
            found = await rollout_store.get(session, rollout_id)
        if found is None:
            raise RolloutNotFound(f"No rollout '{rollout_id}'.")
        return found

    async def latest(self, route_name: str) -> tuple[StoredRollout, list[StoredEvent]]:
        async with self._sessions() as session:
            await get_route(session, route_name)
            rollout = await rollout_store.latest_for_route(session, route_name)
            if rollout is None:
                raise RolloutNotFound(f"The route '{route_name}' has no rollout.")
            return rollout, await rollout_store.events(session, rollout.id)

    def publish(self, rollouts: list[StoredRollout]) -> None:
        """Set the phase and weight gauges from each route's latest rollout."""
        for rollout in rollouts:
            for phase in Phase:
                is_it = 1.0 if phase is rollout.state.phase else 0.0
                self._metrics.rollout_phase.labels(rollout.route, phase.value).set(is_it)
            now = traffic(rollout.state, rollout.spec)
            self._metrics.rollout_weight.labels(rollout.route, "canary").set(now.canary_weight)
            self._metrics.rollout_weight.labels(rollout.route, "shadow").set(now.shadow_percent)
