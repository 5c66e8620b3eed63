"""Stateful property test of the pure rollout machine over a small book of routes.

Hypothesis starts rollouts, ticks them on the verdicts of random windows, moves a fake clock and
sends people's commands, in random order. The book keeps the database's one rule the machine cannot
see itself: at most one active rollout per route (the unique ``active_route`` column, set while
the rollout is active and cleared when it ends).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rollout.core.figures import Sample, Window, window
from rollout.core.gates import Verdict, judge, latency_alpha, overall
from rollout.core.machine import (
    ACTIVE,
    RUNNING,
    Command,
    NotAllowed,
    Outcome,
    Phase,
    State,
    Traffic,
    command,
    tick,
    traffic,
)
from rollout.core.spec import LIVE_GATES, GateName, RolloutSpec, Step, StepKind
from rollout.core.split import Arm

ROUTES = ("route-a", "route-b")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN_SAMPLES = 5
# Enough for every gate's interval to decide at the specs' alpha (0.5, split over up to 35
# (gate, step) pairs): a window of the same version passes, one of errors fails.
ENOUGH = 4000

TERMINAL = frozenset(Phase) - ACTIVE
# The phases each command fits, and those where it already took effect (a repeat: no event).
FITS: dict[Command, frozenset[Phase]] = {
    Command.PAUSE: ACTIVE,
    Command.RESUME: ACTIVE,
    Command.PROMOTE: ACTIVE | {Phase.PROMOTED},
    Command.ABORT: ACTIVE | {Phase.ABORTED},
    Command.RETRY: frozenset({Phase.PENDING, Phase.ROLLED_BACK, Phase.ABORTED}),
}
REPEAT: dict[Command, frozenset[Phase]] = {
    Command.PAUSE: frozenset({Phase.PAUSED}),
    Command.RESUME: ACTIVE - {Phase.PAUSED},
    Command.PROMOTE: frozenset({Phase.PROMOTED}),
    Command.ABORT: frozenset({Phase.ABORTED}),
    Command.RETRY: frozenset({Phase.PENDING}),
}
EVENT = {
    Command.PAUSE: "paused",
    Command.RESUME: "resumed",
    Command.PROMOTE: "promoted",
    Command.ABORT: "aborted",
    Command.RETRY: "retried",
}
# Passing windows twice as often, so rollouts get through their steps.
WINDOWS = ("pass", "pass", "fail_errors", "fail_latency", "too_few", "empty")


@st.composite
def specs(draw: st.DrawFn) -> RolloutSpec:
    shadows = draw(st.lists(st.integers(1, 100), max_size=2))
    canaries = sorted(draw(st.lists(st.integers(1, 100), max_size=3)))
    if not shadows and not canaries:
        canaries = [draw(st.integers(1, 100))]
    durations = st.sampled_from([0.0, 30.0, 60.0])
    steps = [
        Step(
            kind=StepKind.SHADOW, weight=w, min_duration_s=draw(durations), min_samples=MIN_SAMPLES
        )
        for w in shadows
    ] + [
        Step(
            kind=StepKind.CANARY, weight=w, min_duration_s=draw(durations), min_samples=MIN_SAMPLES
        )
        for w in canaries
    ]
    gates = draw(
        st.sampled_from(
            [
                (GateName.ERROR_RATE,),
                (GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO, GateName.AGREEMENT),
                LIVE_GATES,
            ]
        )
    )
    return RolloutSpec(
        candidate="triage@2",
        steps=tuple(steps),
        gates=gates,
        alpha=0.5,
        failure_limit=draw(st.integers(1, 3)),
        inconclusive_limit=draw(st.integers(1, 3)),
        progress_deadline_s=draw(st.sampled_from([120.0, 300.0])),
    )


def samples(arm: Arm, n: int, status: int = 200, latency_ms: float = 100.0) -> list[Sample]:
    agreed, answer = {"label": True, "team": True}, {"label": "a"}
    return [Sample(arm, status, latency_ms, True, False, 0.9, agreed, answer) for _ in range(n)]


@functools.lru_cache(maxsize=64)
def build_window(kind: str, arm: Arm, level: float) -> Window:
    stable = samples(Arm.STABLE, ENOUGH)
    candidate = {
        "pass": samples(arm, ENOUGH),
        "fail_errors": samples(arm, ENOUGH, status=500),
        "fail_latency": samples(arm, ENOUGH, latency_ms=1000.0),
        "too_few": samples(arm, MIN_SAMPLES - 1),
        "empty": [],
    }[kind]
    return window(stable + candidate, arm, None, level)


class RouteBusy(Exception):
    """What the database's unique ``active_route`` refuses."""


@dataclass
class Rollout:
    id: str
    route: str
    spec: RolloutSpec
    state: State


class Book:
    """Rollouts per route, newest last, with the unique ``active_route`` index."""

    def __init__(self) -> None:
        self.rollouts: dict[str, list[Rollout]] = {route: [] for route in ROUTES}
        self.active_route: dict[str, str] = {}  # route -> the id of its active rollout

    def insert(self, rollout: Rollout) -> None:
        assert rollout.state.active
        if rollout.route in self.active_route:
            raise RouteBusy(rollout.route)
        self.active_route[rollout.route] = rollout.id
        self.rollouts[rollout.route].append(rollout)

    def save(self, rollout: Rollout, state: State) -> None:
        holder = self.active_route.get(rollout.route)
        if state.active:
            if holder is not None and holder != rollout.id:
                raise RouteBusy(rollout.route)
            self.active_route[rollout.route] = rollout.id
        elif holder == rollout.id:
            del self.active_route[rollout.route]
        rollout.state = state


class RolloutBook(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = Book()
        self.now = T0
        self.made = 0

    # --- helpers -----------------------------------------------------------------------------

    def latest(self, route: str) -> Rollout | None:
        rollouts = self.book.rollouts[route]
        return rollouts[-1] if rollouts else None

    def save(self, rollout: Rollout, out: Outcome, via: Command | None) -> bool:
        """Persist ``out`` as the database would; ``False`` when the route was busy."""
        old = rollout.state
        if not old.active and out.state.active:
            # A finished rollout comes back only through a person's retry.
            assert via is Command.RETRY, (old, out)
        try:
            self.book.save(rollout, out.state)
        except RouteBusy:
            assert via is Command.RETRY and out.state.active
            assert rollout.state == old
            return False
        return True

    def apply(self, rollout: Rollout, cmd: Command, actor: str = "sre") -> Outcome | None:
        old = rollout.state
        try:
            out = command(old, rollout.spec, cmd, actor, f"{cmd} by hand", self.now)
        except NotAllowed:
            assert old.phase not in FITS[cmd], (cmd, old)
            return None
        assert old.phase in FITS[cmd], (cmd, old)
        if old.phase in REPEAT[cmd]:
            assert out == Outcome(old), (cmd, old, out)
        else:
            assert out.event is not None
            assert (out.event.kind, out.event.from_phase, out.event.actor) == (
                EVENT[cmd],
                old.phase,
                actor,
            )
            assert out.event.to_phase is out.state.phase
            expected = {
                Command.PAUSE: Phase.PAUSED,
                Command.RESUME: old.paused_phase or Phase.PENDING,
                Command.PROMOTE: Phase.PROMOTED,
                Command.ABORT: Phase.ABORTED,
                Command.RETRY: Phase.PENDING,
            }[cmd]
            assert out.state.phase is expected
            if cmd is Command.PAUSE:
                assert out.state.paused_phase is old.phase
                assert traffic(out.state, rollout.spec) == traffic(old, rollout.spec)
            if cmd is Command.RESUME:
                assert out.state.step == old.step and out.state.step_started_at == self.now
                assert out.state.failures == old.failures and out.state.inconclusive == 0
            if cmd is Command.RETRY:
                assert out.state == State.new(self.now)
        self.save(rollout, out, cmd)
        return out

    # --- rules -------------------------------------------------------------------------------

    @initialize(first=specs(), second=specs())
    def start_one_per_route(self, first: RolloutSpec, second: RolloutSpec) -> None:
        for route, spec in zip(ROUTES, (first, second), strict=True):
            self.start(route, spec)

    @rule(route=st.sampled_from(ROUTES), spec=specs())
    def start(self, route: str, spec: RolloutSpec) -> None:
        busy = any(r.state.active for r in self.book.rollouts[route])
        self.made += 1
        rollout = Rollout(f"ro-{self.made}", route, spec, State.new(self.now))
        before = list(self.book.rollouts[route])
        if busy:
            with pytest.raises(RouteBusy):
                self.book.insert(rollout)
            assert self.book.rollouts[route] == before
        else:
            self.book.insert(rollout)
            assert self.latest(route) is rollout
            assert traffic(rollout.state, spec) == Traffic()

    @rule(seconds=st.integers(1, 200))
    def advance_clock(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(
        route=st.sampled_from(ROUTES),
        analyses=st.lists(
            st.tuples(st.sampled_from(WINDOWS), st.integers(0, 90)), min_size=1, max_size=6
        ),
    )
    def analyse(self, route: str, analyses: list[tuple[str, int]]) -> None:
        """The controller's next analyses of the route's latest rollout, each some seconds on."""
        for kind, later in analyses:
            self.now += timedelta(seconds=later)
            if (rollout := self.latest(route)) is not None:
                self.analyse_once(rollout, kind)

    def analyse_once(self, rollout: Rollout, kind: str) -> None:
        old, spec = rollout.state, rollout.spec
        # The controller judges the current step's window once and ticks on those verdicts; a
        # pending rollout gets its evaluation's, and these routes have no evaluation pack.
        arm = Arm.SHADOW if old.serving_phase() is Phase.SHADOW else Arm.CANARY
        window_now = build_window(kind, arm, latency_alpha(spec))
        verdicts = (
            () if old.phase is Phase.PENDING else judge(spec, spec.steps[old.step], window_now)
        )
        out = tick(old, spec, verdicts, self.now)
        self.save(rollout, out, None)
        new = out.state

        if old.phase is Phase.PENDING:
            assert out.event is not None and out.event.kind == "started"
            assert (new.phase in RUNNING, new.step, new.step_started_at) == (True, 0, self.now)
            return
        if old.phase not in RUNNING:
            assert out == Outcome(old)
            return

        step = spec.steps[old.step]
        verdict = overall(verdicts)
        assert verdict is {
            "pass": Verdict.PASS,
            "fail_errors": Verdict.FAIL,
            "too_few": Verdict.INCONCLUSIVE,
            "empty": Verdict.INCONCLUSIVE,
        }.get(kind, verdict)
        elapsed = (self.now - old.step_started_at).total_seconds()
        if verdict is Verdict.FAIL:
            assert new.failures == old.failures + 1
            if new.failures >= spec.failure_limit:
                assert new.phase is Phase.ROLLED_BACK
                assert out.event is not None and out.event.kind == "rolled_back"
            else:
                assert new.phase is old.phase and new.step == old.step
                assert out.event is not None and out.event.kind == "analysis_failed"
        elif elapsed > spec.progress_deadline_s:
            assert new.phase is Phase.ROLLED_BACK
        elif elapsed < step.min_duration_s:
            assert new == old and out.event is None
        elif verdict is Verdict.INCONCLUSIVE:
            assert new.inconclusive == old.inconclusive + 1
            if new.inconclusive >= spec.inconclusive_limit:
                assert new.phase is Phase.PAUSED and new.paused_phase is old.phase
                assert traffic(new, spec) == traffic(old, spec)
            else:
                assert new.phase is old.phase and out.event is None
        elif old.step + 1 == len(spec.steps):
            assert new.phase is Phase.PROMOTED
        else:
            assert new.step == old.step + 1
            assert new.step_started_at == self.now
            assert (new.failures, new.inconclusive) == (0, 0)
            next_kind = spec.steps[new.step].kind
            assert new.phase is (Phase.SHADOW if next_kind is StepKind.SHADOW else Phase.CANARY)

    @rule(route=st.sampled_from(ROUTES))
    def pause(self, route: str) -> None:
        if (rollout := self.latest(route)) is not None:
            self.apply(rollout, Command.PAUSE)

    @rule(route=st.sampled_from(ROUTES))
    def resume(self, route: str) -> None:
        if (rollout := self.latest(route)) is not None:
            self.apply(rollout, Command.RESUME)

    @rule(route=st.sampled_from(ROUTES))
    def promote(self, route: str) -> None:
        if (rollout := self.latest(route)) is not None:
            self.apply(rollout, Command.PROMOTE)

    @rule(route=st.sampled_from(ROUTES))
    def abort(self, route: str) -> None:
        rollout = self.latest(route)
        if rollout is None:
            return
        first = self.apply(rollout, Command.ABORT)
        if first is None:
            return
        assert rollout.state.phase is Phase.ABORTED
        assert traffic(rollout.state, rollout.spec) == Traffic()
        aborted = rollout.state
        second = self.apply(rollout, Command.ABORT, actor="someone-else")
        assert second == Outcome(aborted)
        assert rollout.state == aborted
        with pytest.raises(NotAllowed):
            command(aborted, rollout.spec, Command.PROMOTE, "sre", "too late", self.now)

    @rule(route=st.sampled_from(ROUTES))
    def retry(self, route: str) -> None:
        if (rollout := self.latest(route)) is not None:
            self.apply(rollout, Command.RETRY)

    @rule(route=st.sampled_from(ROUTES), pick=st.integers(0, 100))
    def retry_older(self, route: str, pick: int) -> None:
        """Retry any rollout of the route, so the book's unique rule gets tested on retries."""
        rollouts = self.book.rollouts[route]
        if not rollouts:
            return
        rollout = rollouts[pick % len(rollouts)]
        others_active = any(r.state.active for r in rollouts if r is not rollout)
        old = rollout.state
        try:
            out = command(old, rollout.spec, Command.RETRY, "sre", "again", self.now)
        except NotAllowed:
            assert old.phase not in FITS[Command.RETRY]
            return
        saved = self.save(rollout, out, Command.RETRY)
        assert saved is not (others_active and out.state.active)

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def traffic_follows_the_step(self) -> None:
        for rollouts in self.book.rollouts.values():
            for rollout in rollouts:
                state, spec = rollout.state, rollout.spec
                assert 0 <= state.step < len(spec.steps)
                t = traffic(state, spec)
                assert 0 <= t.canary_weight <= 100 and 0 <= t.shadow_percent <= 100
                assert not (t.canary_weight and t.shadow_percent)
                if state.serving_phase() in RUNNING:
                    step = spec.steps[state.step]
                    assert state.serving_phase() is (
                        Phase.SHADOW if step.kind is StepKind.SHADOW else Phase.CANARY
                    )
                    if step.kind is StepKind.CANARY:
                        assert t == Traffic(canary_weight=step.weight)
                    else:
                        assert t == Traffic(shadow_percent=step.weight)
                else:
                    assert t == Traffic()
                if state.phase in TERMINAL or state.phase is Phase.PENDING:
                    assert t == Traffic()

    @invariant()
    def one_active_rollout_per_route(self) -> None:
        for route, rollouts in self.book.rollouts.items():
            active = [r.id for r in rollouts if r.state.active]
            assert len(active) <= 1, (route, active)
            assert self.book.active_route.get(route) == (active[0] if active else None)


RolloutBook.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestRolloutBook = RolloutBook.TestCase
