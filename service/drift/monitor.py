"""Drift monitoring's workflows: a route's report, pinning and unpinning its reference, and the
reference frozen when a rollout promotes a version.

Which reference a version is compared with, strongest first:

1. the range an SRE pinned (``PUT /v1/admin/drift/{route}/reference``);
2. the range frozen when a rollout promoted it: the rollout's windows (from its start to the
   promotion), extended until it holds ``drift_reference_min_samples`` records;
3. otherwise its first ``drift_reference_min_samples`` records as stable.

An automatic reference's histograms are computed once, as soon as its range holds enough
records, and stored: it stays what it was when its records are pruned. Until then every feature
is ``insufficient``. The current window is the last ``drift_window_s`` seconds unless the caller
names one. Queries count; the statistics run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
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
from service.drift.statistics import (
    Bands,
    FeatureDrift,
    MinSamples,
    Status,
    compare_categories,
    compare_numbers,
    worst,
)
from service.drift.store import TICK, Profile, StoredReference, Window
from service.errors import InvalidRequest
from service.routes.targets import route_row
from service.settings import Settings

ROLLOUT = "rollout"
FIRST_RECORDS = "first_records"
PINNED = "pinned"


@dataclass(frozen=True, slots=True)
class Span:
    since: datetime | None
    until: datetime | None
    samples: int


@dataclass(frozen=True, slots=True)
class ReferenceSpan(Span):
    source: str | None  # rollout | first_records | pinned; None while there is none yet


@dataclass(frozen=True, slots=True)
class DriftReport:
    route: str
    target: str
    reference: ReferenceSpan
    current: Span
    features: tuple[FeatureDrift, ...]

    @property
    def status(self) -> Status:
        return worst([f.status for f in self.features])


@dataclass(frozen=True, slots=True)
class Rules:
    """What the settings say about judging drift."""

    window_s: float
    bins: int
    reference_min: int
    minimum: MinSamples
    psi: Bands
    js: Bands

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            settings.drift_window_s, settings.drift_bins, settings.drift_reference_min_samples,
            MinSamples(settings.drift_min_samples, settings.drift_min_samples),
            Bands(settings.drift_psi_warn, settings.drift_psi_drift),
            Bands(settings.drift_js_warn, settings.drift_js_drift),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    target: str
    features: tuple[Feature, ...]


async def _route(session: AsyncSession, name: str) -> _Route:
    row = await route_row(session, name)
    return _Route(row.name, row.target, features_for(row.output_schema, row.review_policy))


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
        route, reference = await self._route_and_reference(route_name)
        current_window = Window(route.name, route.target, since, until)
        edges = _edges(reference.profile if reference else None)
        async with self._sessions() as session:
            current = await store.profile(
                session, current_window, route.features, self._rules.bins, edges
            )
        ref_profile = reference.profile if reference is not None else None
        features = await asyncio.to_thread(
            compare, route.features, ref_profile, current, self._rules
        )
        return DriftReport(
            route.name, route.target, _reference_span(reference),
            Span(since, until, current.samples), features,
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
            route = await _route(session, route_name)
            window = Window(route.name, route.target, since, until, any_target=True)
            found = await store.profile(session, window, route.features, self._rules.bins)
            if found.samples < self._rules.reference_min:
                raise InvalidRequest(
                    f"The range holds {found.samples} records of route '{route.name}'; a "
                    f"reference needs at least {self._rules.reference_min} "
                    "(LORAGATE_DRIFT_REFERENCE_MIN_SAMPLES).",
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
        return route.target, ReferenceSpan(since, until, found.samples, PINNED)

    async def unpin(self, route_name: str, audit: Actor | None = None) -> tuple[str, bool]:
        """Back to the automatic reference; whether a pinned one was there. Dropping one is
        audited for ``audit`` in its transaction."""
        async with self._sessions.begin() as session:
            route = await _route(session, route_name)
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

    async def _route_and_reference(self, route_name: str) -> tuple[_Route, StoredReference | None]:
        try:
            async with self._sessions.begin() as session:
                route = await _route(session, route_name)
                return route, await self._reference(session, route)
        except IntegrityError:
            # Another replica stored the same automatic reference first: read theirs.
            async with self._sessions.begin() as session:
                route = await _route(session, route_name)
                return route, await self._reference(session, route)

    async def _reference(self, session: AsyncSession, route: _Route) -> StoredReference | None:
        """The reference in force, computing and storing an automatic one once it can be."""
        stored = await store.references(session, route.name, route.target)
        for ref in stored:
            if ref.profile is not None:
                return ref
        frozen = stored[0] if stored else None  # frozen by a promotion, not computed yet
        need = self._rules.reference_min
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
        found = await store.profile(session, window, route.features, self._rules.bins)
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


def _reference_span(reference: StoredReference | None) -> ReferenceSpan:
    if reference is None:
        return ReferenceSpan(None, None, 0, None)
    if reference.profile is None:  # frozen by a promotion; too few records in it so far
        return ReferenceSpan(reference.since, reference.until, 0, reference.source)
    return ReferenceSpan(reference.since, reference.until, reference.samples, reference.source)


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
