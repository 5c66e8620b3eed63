"""Gate decisions in a sentence, as the status view and a rollback's reason give them. Pure.

candidate error rate 4.1 % [2.9, 5.6] vs stable 0.8 % [0.5, 1.2] (310 and 5,890 requests):
worse beyond the 2-point tolerance
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rollout.core.agreement import WHOLE
from rollout.core.sequential import Interval
from rollout.core.spec import GateName
from rollout.core.verdicts import Verdict

RATE_NAMES = {
    GateName.ERROR_RATE: "error rate",
    GateName.ESCALATION_RATE: "escalation rate",
    GateName.SCHEMA_VALID_RATE: "schema-valid rate",
    GateName.MEAN_CONFIDENCE: "mean confidence",
}
NO_DATA = {
    GateName.LATENCY_P95_RATIO: "no successful requests to time",
}


def pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _points(value: float) -> str:
    """A difference of rates in percentage points, signed."""
    return f"{100 * value:+.1f}"


def _bounds(i: Interval) -> str:
    return f"[{100 * i.low:.1f}, {100 * i.high:.1f}]"


def _limit_points(limit: float) -> str:
    points = 100 * limit
    return f"{points:g}-point" if points != 1 else "1-point"


def _phrase(verdict: Verdict, failed: str, passed: str, undecided: str) -> str:
    if verdict is Verdict.FAIL:
        return failed
    return passed if verdict is Verdict.PASS else undecided


def too_few(candidate: int, stable: int, need: int, what: str = "samples") -> str:
    return f"too few {what}: {candidate:,} candidate and {stable:,} stable, {need:,} needed"


def too_few_compared(compared: int, need: int) -> str:
    return f"too few compared answers: {compared:,}, {need:,} needed"


def no_data(gate: GateName) -> str:
    return NO_DATA.get(gate, "no data")


def rates(
    gate: GateName, cv: float, ci: Interval, sv: float, si: Interval, judged: Interval,
    limit: float, verdict: Verdict, nc: int, ns: int,
) -> str:  # fmt: skip
    lower_worse = gate in (GateName.SCHEMA_VALID_RATE, GateName.MEAN_CONFIDENCE)
    name = RATE_NAMES[gate]
    if gate is GateName.MEAN_CONFIDENCE:
        head = (
            f"candidate {name} {cv:.3f} [{ci.low:.3f}, {ci.high:.3f}] vs stable {sv:.3f} "
            f"[{si.low:.3f}, {si.high:.3f}] ({nc:,} and {ns:,} scored answers)"
        )
    else:
        head = (
            f"candidate {name} {pct(cv)} {_bounds(ci)} vs stable {pct(sv)} {_bounds(si)} "
            f"({nc:,} and {ns:,} samples)"
        )
    tolerance = f"the {_limit_points(limit)} tolerance"
    side = "drop" if lower_worse else "difference"
    return head + _phrase(
        verdict, f": worse beyond {tolerance}", f": within {tolerance}",
        f": undecided, the {side} [{_points(judged.low)}, {_points(judged.high)}] points "
        f"straddles {tolerance}",
    )  # fmt: skip


def _ms(value: float | None) -> str:
    return "open" if value is None else f"{value:.0f}"


def latency(
    cv: float, c: tuple[float, float | None], sv: float, s: tuple[float, float | None],
    judged: Interval, limit: float, verdict: Verdict,
) -> str:  # fmt: skip
    high = "open" if judged.high == float("inf") else f"{judged.high:.2f}"
    head = (
        f"candidate p95 {cv:.0f} ms [{_ms(c[0])}, {_ms(c[1])}] vs stable {sv:.0f} ms "
        f"[{_ms(s[0])}, {_ms(s[1])}]: ratio x{cv / sv:.2f} [{judged.low:.2f}, {high}]"
    )
    return head + _phrase(
        verdict, f", slower beyond x{limit:g}", f", within x{limit:g}",
        f", undecided against x{limit:g}",
    )  # fmt: skip


def compared(marks: Sequence[Mapping[str, bool]], fields: Sequence[str] | None) -> str:
    """What the agreement gate compares, in words: one field, several, or whole answers."""
    if any(WHOLE in m for m in marks):
        return "whole answers"
    seen = {name for m in marks for name in m}
    named = sorted(n for n in (fields or seen) if n in seen) or sorted(fields or seen)
    if len(named) == 1:
        return f"the {named[0]} field"
    listed = ", ".join(named[:4]) + (", ..." if len(named) > 4 else "")
    return f"{len(named)} compared fields ({listed})"


def agreement(
    what: str, mean: float, judged: Interval, n: int, floor: float, verdict: Verdict
) -> str:
    head = f"{what}: agreement with stable {pct(mean)} {_bounds(judged)} over {n:,} answers"
    floor_text = f"the {pct(floor)} floor"
    return head + _phrase(
        verdict,
        f", below {floor_text}",
        f", above {floor_text}",
        f", undecided against {floor_text}",
    )


def drift(
    name: str, distance: float, judged: Interval, limit: float, verdict: Verdict, nc: int, ns: int
) -> str:
    head = (
        f"{name}: Jensen-Shannon distance {distance:.3f} [{judged.low:.3f}, {judged.high:.3f}] "
        f"from stable ({nc:,} and {ns:,} answers)"
    )
    return head + _phrase(
        verdict,
        f": moved beyond {limit:g}",
        f": within {limit:g}",
        f": undecided against {limit:g}",
    )
