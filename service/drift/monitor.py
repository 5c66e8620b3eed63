"""Drift monitoring's workflows: a route's report, pinning and unpinning its reference, and the
reference frozen when a rollout promotes a version.

Which reference a version is compared with, strongest first:

1. the range an SRE pinned (``PUT /v1/admin/drift/{route}/reference``);
2. the range frozen when a rollout promoted it: the rollout's windows (from its start to the
   promotion), extended until it holds ``drift_reference_min_samples`` records;
3. otherwise its first ``drift_reference_min_samples`` records as stable.

An automatic reference's histograms are computed once, as soon as its range holds enough
records, and stored: it stays what it was when its records are pruned. Until then every feature
is ``insufficient``, and the report says how many records it holds and when, at the last day's
rate, it will be ready. The current window is the last ``drift_window_s`` seconds unless the
caller names one. Queries count; the statistics run in a worker thread.

The features are judged as a route (``judge_route``: Holm across them at the route's
false-alarm rate). Beside them, the window's service health (latency, time to first token,
errors, answers cut by a limit) is judged against the route's targets: never drift. A route's
``monitoring`` block may set its targets, smaller minimums and its false-alarm rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rollout.core.split import Arm
from service.audit.actor import Actor
from service.audit.events import record_event
from service.clock import Clock, require_utc
from service.db.repositories import list_routes
from service.drift import store
from service.drift.features import Feature, features_for
from service.drift.minimums import Measured, measured_for
from service.drift.slo import ServiceHealth, Targets, judge_service
from service.drift.statistics import (
    Bands,
    FeatureDrift,
    MinSamples,
    RouteJudgement,
    Status,
    compare_categories,
    compare_numbers,
    judge_route,
)
from service.drift.store import TICK, Profile, StoredReference, Window
from service.errors import InvalidRequest
from service.routes.monitoring import MonitoringSpec
from service.routes.targets import route_row
from service.settings import Settings

ROLLOUT = "rollout"
FIRST_RECORDS = "first_records"
PINNED = "pinned"
# A reference not ready yet: its readiness is estimated from the rate of the last day.
RATE_OVER = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Span:
    since: datetime | None
    until: datetime | None
    samples: int


@dataclass(frozen=True, slots=True)
class ReferenceSpan(Span):
    source: str | None  # rollout | first_records | pinned; None while there is none yet
    needed: int = 0  # records a reference needs
    ready: bool = False  # its histograms are computed; else ``samples`` is what it holds so far
    ready_in_s: float | None = None  # while not ready: at the last day's rate; None if no traffic


@dataclass(frozen=True, slots=True)
class Rules:
    """What the settings, and a route's ``monitoring`` block, say about judging it."""

    window_s: float
    bins: int
    reference_min: int
    minimum: MinSamples
    psi: Bands
    js: Bands
    false_alarm_rate: float
    targets: Targets

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            settings.drift_window_s, settings.drift_bins, settings.drift_reference_min_samples,
            MinSamples(settings.drift_min_samples, settings.drift_min_samples),
            Bands(settings.drift_psi_warn, settings.drift_psi_drift),
            Bands(settings.drift_js_warn, settings.drift_js_drift),
            settings.drift_false_alarm_rate,
            Targets(settings.service_latency_p95_ms, settings.service_ttft_p95_ms,
                    settings.service_error_budget, settings.service_limit_budget),
        )  # fmt: skip

    def for_route(self, spec: MonitoringSpec) -> Rules:
        drift = spec.drift
        window = drift.min_samples or self.minimum.current
        return replace(
            self,
            reference_min=drift.reference_min_samples or self.reference_min,
            minimum=MinSamples(window, window),
            false_alarm_rate=drift.false_alarm_rate or self.false_alarm_rate,
            targets=self.targets.overridden(spec.service.model_dump()),
        )

    @property
    def cost(self) -> Measured | None:
        """What these minimums were measured to cost (bench/drift_false_alarms.py)."""
        return measured_for(self.reference_min, self.minimum.current)


@dataclass(frozen=True, slots=True)
class DriftReport:
    route: str
    target: str
    reference: ReferenceSpan
    current: Span
    judgement: RouteJudgement  # the model's features, judged as a route
    service: ServiceHealth  # beside it, never part of it
    rules: Rules  # the route's minimums, false-alarm rate and targets

    @property
    def features(self) -> tuple[FeatureDrift, ...]:
        return self.judgement.features

    @property
    def status(self) -> Status:
        return self.judgement.status


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    target: str
    features: tuple[Feature, ...]
    rules: Rules


async def _route(session: AsyncSession, name: str, rules: Rules) -> _Route:
    row = await route_row(session, name)
    return _Route(
        row.name, row.target, features_for(row.output_schema, row.review_policy),
        rules.for_route(MonitoringSpec.of_row(row.monitoring)),
    )  # fmt: skip


def _judge(
    features: tuple[Feature, ...], reference: Profile | None, current: Profile, rules: Rules
) -> RouteJudgement:
    return judge_route(compare(features, reference, current, rules), rules.false_alarm_rate)


def compare(
    features: tuple[Feature, ...], reference: Profile | None, current: Profile, rules: Rules
) -> tuple[FeatureDrift, ...]:
    """Every feature's drift, current against reference (CPU work: run it off the loop)."""
    out: list[FeatureDrift] = []
    ref = reference or Profile(0, {}, {})
    for feature in features:
        if feature.name in current.numbers:
            got = current.numbers[feature.name]
            known = ref.numbers.get(feature.name)
            counts = known.counts if known is not None else (0,) * len(got.counts)
            out.append(
                compare_numbers(
                    feature.name, got.edges, counts, got.counts, rules.psi, rules.minimum
                )
            )
        elif feature.name in current.categories:
            out.append(
                compare_categories(
                    feature.name, ref.categories.get(feature.name, {}),
                    current.categories[feature.name], rules.js, rules.minimum,
                )
            )  # fmt: skip
        else:  # a number feature the reference has no edges for (added to the schema since)
            out.append(compare_numbers(feature.name, (), [0], [0], rules.psi, rules.minimum))
    return tuple(out)


class DriftMonitor:
    def __init__(self, sessions: async_sessionmaker[Any], settings: Settings, clock: Clock) -> None:
        self._sessions = sessions
        self._rules = Rules.of(settings)
        self._clock = clock

    @property
    def rules(self) -> Rules:
        return self._rules

    async def report(
        self, route_name: str, since: datetime | None = None, until: datetime | None = None
    ) -> DriftReport:
        """The route's current version now (or over [since, until)) against its reference."""
        until = require_utc(until) if until is not None else self._clock()
        since = require_utc(since) if since is not None else until - self._window
        if since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        route, reference, span = await self._route_and_reference(route_name)
        rules = route.rules
        current_window = Window(route.name, route.target, since, until)
        ref_profile = reference.profile if reference is not None else None
        async with self._sessions() as session:
            current = await store.profile(
                session, current_window, route.features, rules.bins, _edges(ref_profile)
            )
            counts = await store.service_counts(session, current_window)
        judgement = await asyncio.to_thread(_judge, route.features, ref_profile, current, rules)
        return DriftReport(
            route.name, route.target, span, Span(since, until, current.samples), judgement,
            judge_service(counts, rules.targets), rules,
        )  # fmt: skip

    @property
    def _window(self) -> timedelta:
        return timedelta(seconds=self._rules.window_s)

    async def pin(
        self,
        route_name: str,
        since: datetime,
        until: datetime,
        actor: str | None,
        audit: Actor | None = None,
    ) -> tuple[str, ReferenceSpan]:
        """Pin the reference of the route's current version to the route's traffic in
        [since, until), whichever versions served it (so a version can be held against what
        the route answered before it); 400 when the range holds too few records. Audited for
        ``audit`` in its transaction."""
        since, until = require_utc(since), require_utc(until)
        if since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        async with self._sessions.begin() as session:
            route = await _route(session, route_name, self._rules)
            window = Window(route.name, route.target, since, until, any_target=True)
            found = await store.profile(session, window, route.features, route.rules.bins)
            if found.samples < route.rules.reference_min:
                raise InvalidRequest(
                    f"The range holds {found.samples} records of route '{route.name}'; a "
                    f"reference needs at least {route.rules.reference_min} "
                    "(LORAGATE_DRIFT_REFERENCE_MIN_SAMPLES, or the route's monitoring.drift."
                    "reference_min_samples).",
                    param="since",
                )
            await store.replace_reference(
                session, window, pinned=True, source=PINNED, now=self._clock(),
                samples=found.samples, found=found, created_by=actor,
            )  # fmt: skip
            if audit is not None:
                await record_event(
                    session, audit, "drift.pin_reference", f"drift-reference:{route.name}",
                    after={"target": route.target, "since": since.isoformat(),
                           "until": until.isoformat(), "samples": found.samples},
                )  # fmt: skip
        return route.target, ReferenceSpan(
            since, until, found.samples, PINNED, route.rules.reference_min, ready=True
        )

    async def unpin(self, route_name: str, audit: Actor | None = None) -> tuple[str, bool]:
        """Back to the automatic reference; whether a pinned one was there. Dropping one is
        audited for ``audit`` in its transaction."""
        async with self._sessions.begin() as session:
            route = await _route(session, route_name, self._rules)
            dropped = await store.drop_pinned(session, route.name, route.target)
            if dropped and audit is not None:
                await record_event(
                    session, audit, "drift.unpin_reference", f"drift-reference:{route.name}",
                    before={"target": route.target, "pinned": True}, after={"pinned": False},
                )  # fmt: skip
            return route.target, dropped

    async def routes(self) -> list[str]:
        async with self._sessions() as session:
            return [r.name for r in await list_routes(session)]

    async def _route_and_reference(
        self, route_name: str
    ) -> tuple[_Route, StoredReference | None, ReferenceSpan]:
        try:
            return await self._route_and_reference_once(route_name)
        except IntegrityError:
            # Another replica stored the same automatic reference first: read theirs.
            return await self._route_and_reference_once(route_name)

    async def _route_and_reference_once(
        self, route_name: str
    ) -> tuple[_Route, StoredReference | None, ReferenceSpan]:
        async with self._sessions.begin() as session:
            route = await _route(session, route_name, self._rules)
            reference = await self._reference(session, route)
            need = route.rules.reference_min
            if reference is not None and reference.profile is not None:
                span = ReferenceSpan(
                    reference.since, reference.until, reference.samples, reference.source,
                    need, ready=True,
                )  # fmt: skip
            else:
                span = await self._progress(session, route, reference)
            return route, reference, span

    async def _progress(
        self, session: AsyncSession, route: _Route, frozen: StoredReference | None
    ) -> ReferenceSpan:
        """A reference not ready yet: the records it holds so far, and when it will hold
        enough at the rate of the last day (of the time since its first record, if shorter)."""
        since = frozen.since if frozen is not None else None
        arm = None if frozen is not None else Arm.STABLE
        now = self._clock()
        held = await store.count_version_records(session, route.name, route.target, since, arm)
        first = await store.nth_record_at(session, route.name, route.target, since, 1, arm)
        ready_in = None
        if first is not None and first < now:
            start = max(first, now - RATE_OVER)
            recent = await store.count_version_records(
                session, route.name, route.target, start, arm
            )
            rate = recent / (now - start).total_seconds()
            if rate > 0:
                ready_in = max(0.0, route.rules.reference_min - held) / rate
        return ReferenceSpan(
            since, frozen.until if frozen is not None else None, held,
            frozen.source if frozen is not None else None, route.rules.reference_min,
            ready=False, ready_in_s=ready_in,
        )  # fmt: skip

    async def _reference(self, session: AsyncSession, route: _Route) -> StoredReference | None:
        """The reference in force, computing and storing an automatic one once it can be."""
        stored = await store.references(session, route.name, route.target)
        for ref in stored:
            if ref.profile is not None:
                return ref
        frozen = stored[0] if stored else None  # frozen by a promotion, not computed yet
        need = route.rules.reference_min
        if frozen is not None:
            since, until, source = frozen.since, frozen.until, frozen.source
            window = Window(route.name, route.target, since, until)
            if await store.count_records(session, window) < need:
                nth = await store.nth_record_at(
                    session, route.name, route.target, since, need, None
                )
                if nth is None:
                    return frozen
                until = max(until, nth + TICK)
        else:
            nth = await store.nth_record_at(
                session, route.name, route.target, None, need, Arm.STABLE
            )
            if nth is None:
                return None
            first = await store.nth_record_at(
                session, route.name, route.target, None, 1, Arm.STABLE
            )
            since, until, source = first or nth, nth + TICK, FIRST_RECORDS
        window = Window(route.name, route.target, since, until)
        found = await store.profile(session, window, route.features, route.rules.bins)
        await store.replace_reference(
            session, window, pinned=False, source=source, now=self._clock(),
            samples=found.samples, found=found,
            rollout_id=frozen.rollout_id if frozen is not None else None,
        )  # fmt: skip
        return StoredReference(
            route.name, route.target, False, source, since, until, found.samples,
            frozen.rollout_id if frozen is not None else None, found, self._clock(), None,
        )  # fmt: skip


def _edges(reference: Profile | None) -> Mapping[str, tuple[float, ...]] | None:
    """A reference's number bins; None without one (the current window shows its own)."""
    if reference is None:
        return None
    return {name: counts.edges for name, counts in reference.numbers.items()}


async def freeze_on_promotion(
    session: AsyncSession,
    route: str,
    target: str,
    rollout_id: str,
    since: datetime,
    promoted_at: datetime,
) -> None:
    """Freeze the promoted version's reference to its rollout's windows (in the promotion's
    transaction); its histograms are computed once the range holds enough records."""
    await store.replace_reference(
        session, Window(route, target, since, promoted_at + TICK), pinned=False,
        source=ROLLOUT, now=promoted_at, rollout_id=rollout_id,
    )  # fmt: skip
