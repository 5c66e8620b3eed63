"""How often the rollout gates decide wrongly, and how fast they decide: today's point-estimate
gates against the anytime-valid ones, on simulated rollouts run through the pure core.

Each rollout follows the default spec (shadow 100 %, then canary 5 %, 25 %, 50 %; 300 s and 100
samples a step; failure limit 2) on a route with ``--rate`` requests a second, analysed every
10 s as the controller does: each tick adds the tick's requests to the step's cumulative window,
the gates judge it, and ``machine.tick`` moves the rollout. Scenarios:

- ``same``: the same version on both arms (1 % errors, 90 % agreement against a 0.8 floor,
  the same latency and category mix): every rollback is a false alarm, and a promotion is the
  good outcome (its time is the "good version" figure);
- ``errors +5``: the candidate fails 6 % of requests instead of 1 %;
- ``agreement -30``: it agrees with stable on 60 % of answers instead of 90 %;
- ``same, drift gate`` and ``category mix moved``: the same, with the ``output_drift`` gate added
  (4 categories; the candidate's mix moved to a Jensen-Shannon distance of 0.43).

Today's gates (the point estimates the rollout compared before confidence sequences) are kept
here as ``today_judge`` for the comparison.

    python bench/bench_gates.py [--quick] [--rollouts N] [--rate R] [--alpha A]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.core import gates
from rollout.core.drift_gate import output_drift
from rollout.core.figures import ArmFigures, Rate, Window, latency_bounds, p95
from rollout.core.machine import Phase, State, tick
from rollout.core.spec import GateName, RolloutSpec, Step, StepKind
from rollout.core.verdicts import EPSILON, GateResult, Verdict
from service.drift.statistics import category_bins, js_distance

TICK_S = 10.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATEGORIES = ("billing", "bug", "account", "other")
STABLE_MIX = (0.4, 0.3, 0.2, 0.1)
MOVED_MIX = (0.1, 0.2, 0.2, 0.5)


@dataclass(frozen=True)
class Version:
    error_rate: float = 0.01
    agreement: float = 0.9
    latency_median_ms: float = 400.0
    mix: tuple[float, ...] = STABLE_MIX


@dataclass(frozen=True)
class Scenario:
    name: str
    candidate: Version
    gates: tuple[GateName, ...]
    bad: bool


DEFAULT = (GateName.ERROR_RATE, GateName.LATENCY_P95_RATIO, GateName.AGREEMENT)
DRIFT = (*DEFAULT, GateName.OUTPUT_DRIFT)
SCENARIOS = (
    Scenario("same version", Version(), DEFAULT, bad=False),
    Scenario("errors +5 points", Version(error_rate=0.06), DEFAULT, bad=True),
    Scenario("agreement -30 points", Version(agreement=0.6), DEFAULT, bad=True),
    Scenario("same version, drift gate", Version(), DRIFT, bad=False),
    Scenario("category mix moved", Version(mix=MOVED_MIX), DRIFT, bad=True),
)


@dataclass
class Arm:
    """One arm's cumulative figures over the current step."""

    n: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    categories: np.ndarray = field(default_factory=lambda: np.zeros(len(CATEGORIES), int))

    def add(self, rng: np.random.Generator, version: Version, n: int) -> None:
        if n == 0:
            return
        errors = int(rng.binomial(n, version.error_rate))
        self.n += n
        self.errors += errors
        ok = n - errors
        self.latencies.extend(rng.lognormal(np.log(version.latency_median_ms), 0.5, ok).tolist())
        self.latencies.sort()  # a sorted run plus a short one: linear for Timsort
        self.categories += rng.multinomial(ok, version.mix)

    def figures(self, latency_alpha: float | None) -> ArmFigures:
        ordered = self.latencies
        low, high = latency_bounds(ordered, latency_alpha)
        counts = {c: int(k) for c, k in zip(CATEGORIES, self.categories, strict=True) if k}
        return ArmFigures(
            samples=self.n, errors=Rate(self.errors, self.n), latency_p95_ms=p95(ordered),
            latency_p95_low_ms=low, latency_p95_high_ms=high, timed=len(ordered),
            output_fields={"category": counts},
        )  # fmt: skip


Judge = Callable[[RolloutSpec, Step, Window, tuple[int, int]], tuple[GateResult, ...]]


def new_judge(
    spec: RolloutSpec, step: Step, w: Window, agreed: tuple[int, int]
) -> tuple[GateResult, ...]:
    """The anytime-valid gates (``rollout.core.gates``), agreement from its tally."""
    alpha, t, need = gates.gate_alpha(spec), spec.thresholds, step.min_samples
    few = "" if min(w.candidate.samples, w.stable.samples) >= need else "too few"
    results = []
    for gate in spec.gates:
        if not gates.applies(gate, step):
            continue
        if gate is GateName.ERROR_RATE:
            c, s = gates.tally(w.candidate.errors), gates.tally(w.stable.errors)
            results.append(gates.rate_gate(gate, c, s, t.max_error_rate_increase, few, alpha))
        elif gate is GateName.LATENCY_P95_RATIO:
            limit = t.max_latency_p95_ratio
            results.append(gates.latency_gate(w.candidate, w.stable, limit, few, alpha))
        elif gate is GateName.AGREEMENT:
            scores = gates.Tally(float(agreed[0]), agreed[1])
            verdict = gates.agreement_gate(scores, t.min_agreement, need, alpha, "the field")
            results.append(verdict)
        else:
            results.append(output_drift(w, t.max_output_drift, need, alpha))
    return tuple(results)


def today_judge(
    spec: RolloutSpec, step: Step, w: Window, agreed: tuple[int, int]
) -> tuple[GateResult, ...]:
    """The gates as they judged before: point estimates against the limits, once a step has
    ``min_samples``."""
    t, need = spec.thresholds, step.min_samples
    c, s = w.candidate, w.stable
    few = min(c.samples, s.samples) < need
    results = []
    for gate in spec.gates:
        if not gates.applies(gate, step):
            continue
        verdict = Verdict.INCONCLUSIVE
        if gate is GateName.ERROR_RATE and not few:
            diff = (c.errors.value or 0.0) - (s.errors.value or 0.0)
            verdict = _limit(diff <= t.max_error_rate_increase + EPSILON)
        elif (
            gate is GateName.LATENCY_P95_RATIO and not few and c.latency_p95_ms and s.latency_p95_ms
        ):
            verdict = _limit(c.latency_p95_ms / s.latency_p95_ms <= t.max_latency_p95_ratio)
        elif gate is GateName.AGREEMENT and agreed[1] >= need:
            verdict = _limit(agreed[0] / agreed[1] >= t.min_agreement)
        elif gate is GateName.OUTPUT_DRIFT:
            cc, sc = c.output_fields["category"], s.output_fields["category"]
            if min(sum(cc.values()), sum(sc.values())) >= need:
                _, stable_counts, cand_counts = category_bins(sc, cc)
                verdict = _limit(js_distance(stable_counts, cand_counts) <= t.max_output_drift)
        results.append(GateResult(gate, verdict, None, None, 0.0, ""))
    return tuple(results)


def _limit(ok: bool) -> Verdict:
    return Verdict.PASS if ok else Verdict.FAIL


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    seconds: float
    candidate_samples: int


def simulate(
    spec: RolloutSpec, judge: Judge, candidate: Version, rate: float, seed: int
) -> Outcome:
    rng = np.random.default_rng(seed)
    stable_version = Version()
    now = T0
    state = tick(State.new(now), spec, (), now).state
    per_tick = rate * TICK_S
    total_candidate = 0
    latency_alpha = gates.latency_alpha(spec)
    while state.phase in (Phase.SHADOW, Phase.CANARY):
        step_index = state.step
        step = spec.steps[step_index]
        stable, cand = Arm(), Arm()
        agreed = [0, 0]
        while state.phase in (Phase.SHADOW, Phase.CANARY) and state.step == step_index:
            now += timedelta(seconds=TICK_S)
            n = int(rng.poisson(per_tick))
            if step.kind is StepKind.SHADOW:
                served, copied = n, n
            else:
                copied = int(rng.binomial(n, step.weight / 100))
                served = n - copied
            stable.add(rng, stable_version, served)
            cand.add(rng, candidate, copied)
            total_candidate += copied
            if step.kind is StepKind.SHADOW:
                answered = copied  # each shadow answer is compared with stable's
                agreed[0] += int(rng.binomial(answered, candidate.agreement))
                agreed[1] += answered
            w = Window(stable.figures(latency_alpha), cand.figures(latency_alpha))
            verdicts = judge(spec, step, w, (agreed[0], agreed[1]))
            state = tick(state, spec, verdicts, now).state
    return Outcome(state.phase, (now - T0).total_seconds(), total_candidate)


def spec_for(scenario: Scenario, alpha: float) -> RolloutSpec:
    return RolloutSpec(candidate="t@2", gates=scenario.gates, alpha=alpha)


@dataclass(frozen=True)
class Row:
    rolled_back: float
    promoted: float
    paused: float
    median_samples: float | None
    median_seconds: float | None


def summarise(outcomes: list[Outcome], bad: bool) -> Row:
    back = [o for o in outcomes if o.phase is Phase.ROLLED_BACK]
    done = [o for o in outcomes if o.phase is Phase.PROMOTED]
    decided = back if bad else done
    paused = [o for o in outcomes if o.phase is Phase.PAUSED]
    return Row(
        100 * len(back) / len(outcomes), 100 * len(done) / len(outcomes),
        100 * len(paused) / len(outcomes),
        statistics.median(o.candidate_samples for o in decided) if decided else None,
        statistics.median(o.seconds for o in decided) if decided else None,
    )  # fmt: skip


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 rollouts a scenario")
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--scenario", action="append", help="run only the scenarios named (repeatable)"
    )
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    count = 150 if args.quick else args.rollouts
    started = time.monotonic()
    print(
        f"{count} rollouts a scenario, {args.rate:g} requests/s, default steps, "
        f"analysis every {TICK_S:g} s, alpha {args.alpha:g}"
    )
    print(
        "| scenario | gates | rolled back | promoted | paused (undecided) "
        "| median candidate samples to decide | median time to decide |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    summary: dict[str, dict[str, Row]] = {}
    for scenario in chosen:
        spec = spec_for(scenario, args.alpha)
        for label, judge in (("today", today_judge), ("new", new_judge)):
            outcomes = [
                simulate(spec, judge, scenario.candidate, args.rate, seed) for seed in range(count)
            ]
            row = summarise(outcomes, scenario.bad)
            summary.setdefault(scenario.name, {})[label] = row
            print(
                f"| {scenario.name} | {label} | {row.rolled_back:.1f} % | {row.promoted:.1f} % "
                f"| {row.paused:.1f} % "
                f"| {_fmt(row.median_samples)} | {_fmt(row.median_seconds, ' s')} |",
                flush=True,
            )
    print(f"({time.monotonic() - started:.0f} s)")
    print(last_line(summary, chosen, args.alpha))


def last_line(summary: dict[str, dict[str, Row]], chosen: list[Scenario], alpha: float) -> str:
    same = max((summary[s.name]["new"].rolled_back for s in chosen if not s.bad), default=0.0)
    bad = [s.name for s in chosen if s.bad]
    caught = min((summary[name]["new"].rolled_back for name in bad), default=float("nan"))
    ratios = [
        new / today
        for name in bad
        if (new := summary[name]["new"].median_samples)
        and (today := summary[name]["today"].median_samples)
    ]
    ratio = statistics.median(ratios) if ratios else float("nan")
    return (
        f"alpha {alpha:g}: same version rolled back {same:.1f} %, bad caught {caught:.1f} %, "
        f"median samples to catch {ratio:.1f}x today"
    )


if __name__ == "__main__":
    main()
