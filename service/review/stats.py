"""The review queue's gauges, refreshed from the database on an interval by every replica.

Figures come from the database rather than from counters in one process, so every replica
exports the same queue depth, oldest age and decision totals.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from monitoring.metrics import Metrics
from service.clock import Clock
from service.review import reads
from service.review.model import KIND_OF_STATE
from service.review.quality import quality
from service.review.queue import write_transaction
from service.review.sla import SlaTargets, mark_breaches, overdue_counts

log = logging.getLogger(__name__)
# The QA and agreement gauges read the review items of this long ago and since.
QUALITY_WINDOW = timedelta(days=30)


class ReviewStats:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        metrics: Metrics,
        clock: Clock,
        interval_s: float,
        sla: SlaTargets | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._sla = sla or SlaTargets()
        self._routes: set[str] = set()

    async def refresh(self) -> None:
        now = self._clock()
        async with write_transaction(self._sessions) as session:
            breaches = await mark_breaches(session, self._sla, now)
        async with self._sessions() as session:
            stats = await reads.queue_stats(session, now)
            decided = await reads.decided_counts(session)
            overdue = await overdue_counts(session, self._sla, now)
            figures = await quality(session, now - QUALITY_WINDOW)
        m = self._metrics
        for (route, tier), count in breaches.items():
            m.review_sla_breaches.labels(route, tier).inc(count)
        for tier, count in overdue.items():
            m.review_overdue.labels(tier).set(count)
        nan = float("nan")
        for route, qa in figures.qa.items():
            share = qa.changed
            for bound, value in (("estimate", share.estimate), ("low", share.low),
                                 ("high", share.high)):  # fmt: skip
                m.review_qa_changed_share.labels(route, bound).set(nan if value is None else value)
        for route, agreed in figures.agreement.items():
            m.review_kappa.labels(route).set(nan if agreed.kappa is None else agreed.kappa)
            fields = agreed.field_agreement
            m.review_field_agreement.labels(route).set(nan if fields is None else fields)
        self._routes |= stats.depth.keys()
        for route in self._routes:  # a route drained since the last refresh shows 0
            m.review_depth.labels(route).set(stats.depth.get(route, 0))
        m.review_oldest_age.set(stats.oldest_pending_age_s or 0.0)
        m.review_parked.set(stats.parked)
        totals: dict[str, int] = {}
        for (target, state), count in decided.items():
            m.review_decisions.labels(target, KIND_OF_STATE[state].value).set(count)
            totals[target] = totals.get(target, 0) + count
        for target, total in totals.items():
            m.review_approved_share.labels(target).set(decided.get((target, "approved"), 0) / total)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the review queue gauges failed")
            await asyncio.sleep(self._interval_s)
