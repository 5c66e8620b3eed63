"""The rollout state machine: one analysis tick or one command in, the next state out. Pure.

    pending [-> evaluating] -> shadow/canary (step i) -> ... -> promoted
                      |  paused (a person, or inconclusive too long) -> resume
                      |  rolled_back (gates failed past the limit, or the progress deadline)
                      |  aborted (a person)
    rolled_back | aborted -> retry -> pending

Nothing here reads a clock or a database: the caller passes ``now`` and the gates' verdicts on
the current step's window (judged once, by ``gates.judge``), and persists the returned state and
event together. A rollout whose route has an evaluation pack is evaluated offline first: the
caller starts the run and hands its verdicts to the pending tick (none: no evaluation), and
``evaluating`` moves on only once they pass; a failure there rolls back before any live request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from rollout.core.gates import GateResult, Verdict, overall
from rollout.core.spec import RolloutSpec, StepKind


class Phase(StrEnum):
    PENDING = "pending"
    EVALUATING = "evaluating"
    SHADOW = "shadow"
    CANARY = "canary"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


ACTIVE = frozenset({Phase.PENDING, Phase.EVALUATING, Phase.SHADOW, Phase.CANARY, Phase.PAUSED})
RUNNING = frozenset({Phase.SHADOW, Phase.CANARY})


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ABORT = "abort"
    RETRY = "retry"


class NotAllowed(Exception):
    """A command that does not fit the rollout's phase."""


@dataclass(frozen=True, slots=True)
class State:
    phase: Phase
    step: int
    step_started_at: datetime
    failures: int = 0
    inconclusive: int = 0
    paused_phase: Phase | None = None  # the phase to resume into
    evaluation_run: str | None = None  # the offline evaluation's run, once started

    @classmethod
    def new(cls, now: datetime) -> State:
        return cls(Phase.PENDING, 0, now)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def serving_phase(self) -> Phase:
        """The phase whose traffic is served: a paused rollout keeps its step's traffic."""
        return self.paused_phase if self.phase is Phase.PAUSED and self.paused_phase else self.phase


@dataclass(frozen=True, slots=True)
class Traffic:
    canary_weight: int = 0
    shadow_percent: int = 0


def traffic(state: State, spec: RolloutSpec) -> Traffic:
    if state.serving_phase() not in RUNNING:
        return Traffic()
    step = spec.steps[state.step]
    if step.kind is StepKind.CANARY:
        return Traffic(canary_weight=step.weight)
    return Traffic(shadow_percent=step.weight)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    from_phase: Phase
    to_phase: Phase
    step: int
    reason: str
    actor: str


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    event: Event | None = None

    @property
    def changed(self) -> bool:
        return self.event is not None


CONTROLLER = "controller"


def _phase_of(spec: RolloutSpec, step: int) -> Phase:
    return Phase.SHADOW if spec.steps[step].kind is StepKind.SHADOW else Phase.CANARY


def _move(old: State, new: State, kind: str, reason: str, actor: str = CONTROLLER) -> Outcome:
    event = Event(kind, old.phase, new.phase, new.step, reason, actor)
    return Outcome(new, event)


def tick(
    state: State, spec: RolloutSpec, verdicts: tuple[GateResult, ...], now: datetime
) -> Outcome:
    """One analysis: from the current step's verdicts, move on, stay, pause or roll back.

    ``verdicts`` count only while a step runs (shadow or canary); other phases ignore them.
    """
    if state.phase is Phase.PENDING:
        if verdicts:
            evaluating = State(Phase.EVALUATING, 0, now, evaluation_run=state.evaluation_run)
            return _move(state, evaluating, "evaluating", _details(verdicts))
        return _first_step(state, spec, now, "")
    if state.phase is Phase.EVALUATING:
        return _evaluated(state, spec, verdicts, now)
    if state.phase not in RUNNING:
        return Outcome(state)
    step = spec.steps[state.step]
    elapsed = (now - state.step_started_at).total_seconds()
    verdict = overall(verdicts)
    if verdict is Verdict.FAIL:
        failures = state.failures + 1
        failed = ", ".join(f"{r.gate}: {r.detail}" for r in verdicts if r.verdict is Verdict.FAIL)
        if failures >= spec.failure_limit:
            back = replace(state, phase=Phase.ROLLED_BACK, failures=failures)
            return _move(state, back, "rolled_back", f"gates failed {failures} times; {failed}")
        counted = replace(state, failures=failures, inconclusive=0)
        return _move(
            state, counted, "analysis_failed", f"{failures} of {spec.failure_limit}: {failed}"
        )
    if elapsed > spec.progress_deadline_s:
        back = replace(state, phase=Phase.ROLLED_BACK)
        return _move(
            state,
            back,
            "rolled_back",
            f"progress deadline: step {state.step + 1} did not pass "
            f"in {spec.progress_deadline_s:.0f} s",
        )
    if elapsed < step.min_duration_s:
        return Outcome(state)
    if verdict is Verdict.INCONCLUSIVE:
        count = state.inconclusive + 1
        if count >= spec.inconclusive_limit:
            paused = replace(
                state, phase=Phase.PAUSED, paused_phase=state.phase, inconclusive=count
            )
            unsure = ", ".join(
                f"{r.gate}: {r.detail}" for r in verdicts if r.verdict is Verdict.INCONCLUSIVE
            )
            return _move(state, paused, "paused", f"inconclusive {count} times in a row; {unsure}")
        return Outcome(replace(state, inconclusive=count))
    if state.step + 1 >= len(spec.steps):
        done = replace(state, phase=Phase.PROMOTED)
        return _move(state, done, "promoted", "every step passed its gates")
    nxt = state.step + 1
    advanced = State(_phase_of(spec, nxt), nxt, now)
    return _move(
        state,
        advanced,
        "step_advanced",
        f"step {state.step + 1} passed; step {nxt + 1} of {len(spec.steps)}",
    )


def _first_step(state: State, spec: RolloutSpec, now: datetime, why: str) -> Outcome:
    first = State(_phase_of(spec, 0), 0, now, evaluation_run=state.evaluation_run)
    return _move(state, first, "started", f"{why}step 1 of {len(spec.steps)}")


def _details(verdicts: tuple[GateResult, ...], only: Verdict | None = None) -> str:
    return "; ".join(r.detail for r in verdicts if only is None or r.verdict is only)


def _evaluated(
    state: State, spec: RolloutSpec, verdicts: tuple[GateResult, ...], now: datetime
) -> Outcome:
    verdict = overall(verdicts)
    if verdict is Verdict.FAIL:
        back = replace(state, phase=Phase.ROLLED_BACK)
        reason = f"evaluation failed, before any live request: {_details(verdicts, Verdict.FAIL)}"
        return _move(state, back, "rolled_back", reason)
    if verdict is Verdict.PASS:
        return _first_step(state, spec, now, f"evaluation passed ({_details(verdicts)}); ")
    if (now - state.step_started_at).total_seconds() > spec.progress_deadline_s:
        back = replace(state, phase=Phase.ROLLED_BACK)
        reason = (
            f"progress deadline: the evaluation did not end in {spec.progress_deadline_s:.0f} s"
        )
        return _move(state, back, "rolled_back", reason)
    return Outcome(state)


def command(
    state: State, spec: RolloutSpec, cmd: Command, actor: str, reason: str, now: datetime
) -> Outcome:
    """Apply a person's command. Repeating one that already took effect changes nothing."""
    phase = state.phase
    if cmd is Command.PAUSE:
        if phase is Phase.PAUSED:
            return Outcome(state)
        _require(phase in ACTIVE, cmd, phase)
        paused = replace(state, phase=Phase.PAUSED, paused_phase=phase)
        return _move(state, paused, "paused", reason, actor)
    if cmd is Command.RESUME:
        if phase in ACTIVE and phase is not Phase.PAUSED:
            return Outcome(state)
        _require(phase is Phase.PAUSED, cmd, phase)
        back = state.paused_phase or Phase.PENDING
        resumed = State(back, state.step, now, state.failures, evaluation_run=state.evaluation_run)
        return _move(state, resumed, "resumed", reason, actor)
    if cmd is Command.PROMOTE:
        if phase is Phase.PROMOTED:
            return Outcome(state)
        _require(phase in ACTIVE, cmd, phase)
        return _move(state, replace(state, phase=Phase.PROMOTED), "promoted", reason, actor)
    if cmd is Command.ABORT:
        if phase is Phase.ABORTED:
            return Outcome(state)
        _require(phase in ACTIVE, cmd, phase)
        return _move(state, replace(state, phase=Phase.ABORTED), "aborted", reason, actor)
    if phase is Phase.PENDING:
        return Outcome(state)
    _require(phase in (Phase.ROLLED_BACK, Phase.ABORTED), cmd, phase)
    return _move(state, State.new(now), "retried", reason, actor)


def _require(ok: bool, cmd: Command, phase: Phase) -> None:
    if not ok:
        raise NotAllowed(f"cannot {cmd.value} a rollout that is {phase.value.replace('_', ' ')}")
