"""The review queue's gauges, refreshed from the database on an interval by every replica.

Figures come from the database rather than from counters in one process, so every replica
exports the same queue depth, oldest age and decision totals.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from monitoring.metrics import Metrics
from service.clock import Clock
from service.review import queue

log = logging.getLogger(__name__)


class ReviewStats:
    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        metrics: Metrics,
        clock: Clock,
        interval_s: float,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._clock = clock
        self._interval_s = interval_s
        self._routes: set[str] = set()

    async def refresh(self) -> None:
        async with self._sessions() as session:
            stats = await queue.queue_stats(session, self._clock())
            decided = await queue.decided_counts(session)
        m = self._metrics
        self._routes |= stats.depth.keys()
        for route in self._routes:  # a route drained since the last refresh shows 0
            m.review_depth.labels(route).set(stats.depth.get(route, 0))
        m.review_oldest_age.set(stats.oldest_pending_age_s or 0.0)
        m.review_parked.set(stats.parked)
        totals: dict[str, int] = {}
        for (target, state), count in decided.items():
            m.review_decisions.labels(target, queue.KIND_OF_STATE[state].value).set(count)
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
