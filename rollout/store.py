"""Rollouts in the database: state rows guarded by a version column, and their event history.

``save`` writes a new state only if the row still has the version it was read at, and inserts
the transition's event in the same transaction: a transition is applied and recorded together
or not at all, and of two replicas racing on one rollout exactly one wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from rollout.core.figures import (
    CLIENT_CLOSED,
    LATENCY_QUANTILE,
    ArmFigures,
    Rate,
    Window,
    agreement_rates,
    p95_index,
)
from rollout.core.gates import GateResult, Verdict
from rollout.core.machine import ACTIVE, Event, Phase, State, traffic
from rollout.core.sequential import quantile_ranks
from rollout.core.spec import GateName, RolloutSpec
from rollout.core.split import Arm, Split
from service.clock import as_utc
from service.db.models import RequestRecord, Rollout, RolloutEvent

ACTIVE_PHASES = tuple(p.value for p in ACTIVE)
# The agreement gate reads the marks of at most this many compared answers: the step's first
# ones, so past the cap the gate's sample path stops growing (a confidence sequence stays valid
# on a prefix of its path; a sliding window of the newest would not).
MAX_AGREEMENT_SAMPLES = 5_000


class StaleRollout(Exception):
    """Another replica (or command) changed the rollout since it was read."""


class RouteBusy(Exception):
    """The route already has an active rollout."""


@dataclass(frozen=True, slots=True)
class StoredRollout:
    id: str
    route: str
    stable: str
    candidate: str
    spec: RolloutSpec
    state: State
    verdicts: tuple[GateResult, ...]  # the gates' verdicts at the last analysis
    version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    figures: SavedFigures | None = None


@dataclass(frozen=True, slots=True)
class SavedFigures:
    """The per-arm figures of a rollout's last analysis, saved with its verdicts."""

    analysed_at: datetime
    window_start: datetime
    stable: ArmFigures
    candidate: ArmFigures


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One entry of a rollout's history: a transition or a command."""

    at: datetime
    kind: str
    from_phase: Phase
    to_phase: Phase
    step: int
    actor: str
    reason: str


def figures_row(saved: SavedFigures) -> dict[str, Any]:
    return {
        "analysed_at": saved.analysed_at.isoformat(),
        "window_start": saved.window_start.isoformat(),
        "stable": asdict(saved.stable),
        "candidate": asdict(saved.candidate),
    }


def _rate(row: Mapping[str, Any]) -> Rate:
    return Rate(int(row["hits"]), int(row["total"]))


def _arm(row: Mapping[str, Any]) -> ArmFigures:
    return ArmFigures(
        samples=int(row["samples"]), errors=_rate(row["errors"]),
        latency_p95_ms=row["latency_p95_ms"], schema_valid=_rate(row["schema_valid"]),
        escalated=_rate(row["escalated"]), confidence_mean=row["confidence_mean"],
        confidence_n=int(row["confidence_n"]),
        agreement_fields={name: _rate(r) for name, r in row["agreement_fields"].items()},
        output_fields=row.get("output_fields", {}),
        latency_p95_low_ms=row.get("latency_p95_low_ms"),
        latency_p95_high_ms=row.get("latency_p95_high_ms"), timed=int(row.get("timed", 0)),
    )  # fmt: skip


def _saved_figures(row: Mapping[str, Any] | None) -> SavedFigures | None:
    if row is None:
        return None
    return SavedFigures(
        as_utc(datetime.fromisoformat(row["analysed_at"])),
        as_utc(datetime.fromisoformat(row["window_start"])),
        _arm(row["stable"]),
        _arm(row["candidate"]),
    )


def _state(row: Rollout) -> State:
    return State(
        Phase(row.phase), row.step, as_utc(row.step_started_at), row.failures, row.inconclusive,
        Phase(row.paused_phase) if row.paused_phase else None, row.evaluation_run,
    )  # fmt: skip


# Interval fields a verdict saved before gates had intervals lacks (read as absent).
INTERVAL_FIELDS = (
    "low", "high", "candidate_low", "candidate_high", "stable_low", "stable_high", "alpha",
)  # fmt: skip


def _verdict(row: Mapping[str, Any]) -> GateResult:
    return GateResult(
        GateName(row["gate"]), Verdict(row["verdict"]), row["candidate"], row["stable"],
        row["limit"], row["detail"], **{name: row.get(name) for name in INTERVAL_FIELDS},
        candidate_samples=int(row.get("candidate_samples", 0)),
        stable_samples=int(row.get("stable_samples", 0)),
    )  # fmt: skip


def stored(row: Rollout) -> StoredRollout:
    return StoredRollout(
        row.id, row.route, row.stable, row.candidate, RolloutSpec.model_validate(row.spec),
        _state(row), tuple(_verdict(v) for v in row.verdicts), row.version, row.created_by,
        as_utc(row.created_at), as_utc(row.updated_at), _saved_figures(row.figures),
    )  # fmt: skip


def _state_values(state: State) -> dict[str, Any]:
    return {
        "phase": state.phase.value,
        "step": state.step,
        "step_started_at": state.step_started_at,
        "failures": state.failures,
        "inconclusive": state.inconclusive,
        "paused_phase": state.paused_phase.value if state.paused_phase else None,
        "evaluation_run": state.evaluation_run,
    }


def verdict_rows(verdicts: Sequence[GateResult]) -> list[dict[str, Any]]:
    return [{**asdict(v), "gate": v.gate.value, "verdict": v.verdict.value} for v in verdicts]


async def insert(
    session: AsyncSession, *, rollout_id: str, route: str, stable: str, spec: RolloutSpec,
    state: State, actor: str, created_by: str | None, now: datetime,
) -> None:  # fmt: skip
    """Insert a new active rollout and its creation event; ``RouteBusy`` if one is active."""
    session.add(
        Rollout(
            id=rollout_id, route=route, active_route=route, stable=stable,
            candidate=spec.candidate, spec=spec.model_dump(mode="json"), verdicts=[], version=1,
            created_by=created_by, created_at=now, updated_at=now, **_state_values(state),
        )
    )  # fmt: skip
    session.add(
        RolloutEvent(
            rollout_id=rollout_id, at=now, kind="created", from_phase=state.phase.value,
            to_phase=state.phase.value, step=0, actor=actor,
            reason=f"{stable} -> {spec.candidate}", version=1,
        )
    )  # fmt: skip
    try:
        await session.flush()
    except IntegrityError as exc:
        raise RouteBusy(route) from exc


async def save(
    session: AsyncSession,
    current: StoredRollout,
    state: State,
    event: Event | None,
    verdicts: Sequence[GateResult] | None,
    now: datetime,
    figures: SavedFigures | None = None,
) -> int:
    """Write ``state`` if the row is still at ``current.version``; returns the new version.

    ``verdicts`` (with the ``figures`` they were judged on) replace the last analysis; ``None``
    keeps it, so a command such as abort leaves the figures that led to it readable.
    """
    values = _state_values(state)
    values["active_route"] = current.route if state.active else None
    if verdicts is not None:
        values["verdicts"] = verdict_rows(verdicts)
        values["figures"] = figures_row(figures) if figures is not None else None
    version = current.version + 1
    result = await session.execute(
        update(Rollout)
        .where(Rollout.id == current.id, Rollout.version == current.version)
        .values(**values, version=version, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleRollout(current.id)
    if event is not None:
        session.add(
            RolloutEvent(
                rollout_id=current.id, at=now, kind=event.kind, from_phase=event.from_phase.value,
                to_phase=event.to_phase.value, step=event.step, actor=event.actor,
                reason=event.reason[:4000], version=version,
            )
        )  # fmt: skip
    try:
        await session.flush()
    except IntegrityError as exc:
        # A retry re-activating a rollout on a route that has another active one.
        raise RouteBusy(current.route) from exc
    return version


async def active(session: AsyncSession) -> list[StoredRollout]:
    rows = await session.scalars(select(Rollout).where(Rollout.phase.in_(ACTIVE_PHASES)))
    return [stored(r) for r in rows]


async def active_splits(session: AsyncSession) -> dict[str, Split]:
    """The traffic each route's active rollout takes now: what the route snapshot serves (its
    loader, handed in by the composition root)."""
    return {r.route: split_of(r) for r in await active(session)}


def split_of(rollout: StoredRollout) -> Split:
    """The traffic an active rollout takes now (none yet while pending)."""
    now = traffic(rollout.state, rollout.spec)
    return Split(rollout.id, rollout.candidate, now.canary_weight, now.shadow_percent)


async def active_for_route(session: AsyncSession, route: str) -> StoredRollout | None:
    row = await session.scalar(select(Rollout).where(Rollout.active_route == route))
    return stored(row) if row is not None else None


async def latest_for_route(session: AsyncSession, route: str) -> StoredRollout | None:
    row = await session.scalar(
        select(Rollout)
        .where(Rollout.route == route)
        .order_by(Rollout.created_at.desc(), Rollout.id.desc())
        .limit(1)
    )
    return stored(row) if row is not None else None


async def latest_per_route(session: AsyncSession) -> list[StoredRollout]:
    newest = (
        select(Rollout.route, func.max(Rollout.created_at).label("at"))
        .group_by(Rollout.route)
        .subquery()
    )
    rows = await session.scalars(
        select(Rollout).join(
            newest, (Rollout.route == newest.c.route) & (Rollout.created_at == newest.c.at)
        )
    )
    return [stored(r) for r in rows]


async def get(session: AsyncSession, rollout_id: str) -> StoredRollout | None:
    row = await session.get(Rollout, rollout_id, populate_existing=True)
    return stored(row) if row is not None else None


async def events(session: AsyncSession, rollout_id: str) -> list[StoredEvent]:
    query = (
        select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id).order_by(RolloutEvent.id)
    )
    return [
        StoredEvent(
            as_utc(e.at), e.kind, Phase(e.from_phase), Phase(e.to_phase), e.step, e.actor, e.reason
        )
        for e in await session.scalars(query)
    ]


def _flag_sum(column: Any) -> Any:
    return func.sum(case((column.is_(True), 1), else_=0))


async def window(
    session: AsyncSession,
    rollout: StoredRollout,
    since: datetime,
    candidate: Arm,
    output_fields: Sequence[str] = (),
    latency_alpha: float | None = None,
) -> Window:
    """Stable and ``candidate`` figures over the window (cumulative since ``since``: the gates'
    confidence sequences run over the whole step), aggregated by the database.

    Only counts, sums and three latency rows per arm (the p95 and its bounds at
    ``latency_alpha``) cross into Python, so an analysis costs the same at 100 or 100,000
    records; agreement marks are read for the step's first compared answers only, and each of
    ``output_fields`` (categorical answer fields) as counts per arm and value.
    """
    in_window = (
        RequestRecord.rollout_id == rollout.id,
        RequestRecord.created_at >= since,
        RequestRecord.status_code != CLIENT_CLOSED,
    )
    totals = (
        select(
            RequestRecord.arm,
            func.count(),
            func.sum(case((RequestRecord.status_code >= 500, 1), else_=0)),
            func.count(RequestRecord.schema_valid), _flag_sum(RequestRecord.schema_valid),
            func.count(RequestRecord.escalated), _flag_sum(RequestRecord.escalated),
            func.count(RequestRecord.confidence), func.avg(RequestRecord.confidence),
            func.sum(case((RequestRecord.status_code < 400, 1), else_=0)),
        )
        .where(*in_window, RequestRecord.arm.in_([Arm.STABLE.value, candidate.value]))
        .group_by(RequestRecord.arm)
    )  # fmt: skip
    arms: dict[str, ArmFigures] = {}
    for arm, n, errors, sv_n, sv, esc_n, esc, conf_n, conf, ok in await session.execute(totals):
        timed = int(ok or 0)
        p95 = await _latency_at(session, in_window, arm, p95_index(timed) + 1 if timed else None)
        low_rank, high_rank = (
            quantile_ranks(timed, LATENCY_QUANTILE, latency_alpha)
            if latency_alpha is not None else (None, None)
        )  # fmt: skip
        arms[arm] = ArmFigures(
            samples=int(n), errors=Rate(int(errors or 0), int(n)), latency_p95_ms=p95,
            latency_p95_low_ms=await _latency_at(session, in_window, arm, low_rank),
            latency_p95_high_ms=await _latency_at(session, in_window, arm, high_rank),
            timed=timed,
            schema_valid=Rate(int(sv or 0), int(sv_n)), escalated=Rate(int(esc or 0), int(esc_n)),
            confidence_mean=float(conf) if conf is not None else None, confidence_n=int(conf_n),
        )  # fmt: skip
    marks: tuple[Mapping[str, bool], ...] = ()
    if candidate is Arm.SHADOW:
        query = (
            select(RequestRecord.agreement)
            .where(*in_window, RequestRecord.arm == Arm.SHADOW.value,
                   RequestRecord.status_code < 400, RequestRecord.agreement.is_not(None))
            .order_by(RequestRecord.created_at, RequestRecord.id)
            .limit(MAX_AGREEMENT_SAMPLES)
        )  # fmt: skip
        marks = tuple(m for m in await session.scalars(query) if isinstance(m, dict))
    for arm, counts in (await _value_counts(session, in_window, candidate, output_fields)).items():
        arms[arm] = replace(arms.get(arm, ArmFigures()), output_fields=counts)
    shadow = arms.get(candidate.value, ArmFigures())
    if marks:
        shadow = replace(shadow, agreement_fields=agreement_rates(marks))
    return Window(arms.get(Arm.STABLE.value, ArmFigures()), shadow, marks)


async def _value_counts(
    session: AsyncSession, in_window: tuple[Any, ...], candidate: Arm, names: Sequence[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per arm, per answer field: answers per value (read from the records' ``fields``)."""
    found: dict[str, dict[str, dict[str, int]]] = {}
    for name in names:
        value = RequestRecord.fields[name].as_string()
        query = (
            select(RequestRecord.arm, value, func.count())
            .where(*in_window, RequestRecord.arm.in_([Arm.STABLE.value, candidate.value]),
                   RequestRecord.status_code < 400, value.is_not(None))
            .group_by(RequestRecord.arm, value)
        )  # fmt: skip
        for arm, label, n in await session.execute(query):
            key = label if isinstance(label, str) else str(label)
            found.setdefault(arm, {}).setdefault(name, {})[key] = int(n)
    return found


async def _latency_at(
    session: AsyncSession, in_window: tuple[Any, ...], arm: str, rank: int | None
) -> float | None:
    """The ``rank``-th smallest latency (1-based) of the arm's successful requests."""
    if rank is None:
        return None
    query = (
        select(RequestRecord.latency_ms)
        .where(*in_window, RequestRecord.arm == arm, RequestRecord.status_code < 400)
        .order_by(RequestRecord.latency_ms)
        .offset(rank - 1)
        .limit(1)
    )
    value = await session.scalar(query)
    return float(value) if value is not None else None


async def for_candidate(session: AsyncSession, version: str) -> list[StoredRollout]:
    """Every rollout of ``version``, the oldest first (its model card)."""
    rows = await session.scalars(
        select(Rollout).where(Rollout.candidate == version).order_by(Rollout.created_at)
    )
    return [stored(r) for r in rows]
