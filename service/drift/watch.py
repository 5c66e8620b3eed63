"""The drift gauges, refreshed on an interval by every gateway replica.

Each refresh reports every route's current version (a few aggregate queries per route, the
statistics in a worker thread) and sets ``loragate_drift_score`` and ``loragate_drift_status``.
A feature whose status changed since the last refresh is logged and counted; the series of a
version a route no longer serves are removed, so an alert cannot hang on a version that left.
"""

from __future__ import annotations

import asyncio
import logging
import math

from monitoring.metrics import Metrics
from service.drift.monitor import DriftMonitor, DriftReport
from service.drift.statistics import Status
from service.errors import RouteNotFound

log = logging.getLogger(__name__)

Series = tuple[str, str, str]  # route, target, feature


class DriftWatch:
    def __init__(self, monitor: DriftMonitor, metrics: Metrics, interval_s: float) -> None:
        self._monitor = monitor
        self._metrics = metrics
        self._interval_s = interval_s
        self._statuses: dict[Series, Status] = {}

    async def refresh(self) -> None:
        seen: set[Series] = set()
        for route in await self._monitor.routes():
            try:
                report = await self._monitor.report(route)
            except RouteNotFound:
                continue  # removed since it was listed
            except Exception:
                log.exception(
                    "drift report of route %s failed; its gauges stay as they were", route
                )
                seen |= {series for series in self._statuses if series[0] == route}
                continue
            seen |= self.publish(report)
        for gone in set(self._statuses) - seen:
            self._forget(gone)

    def publish(self, report: DriftReport) -> set[Series]:
        m = self._metrics
        published: set[Series] = set()
        for feature in report.features:
            series = (report.route, report.target, feature.name)
            published.add(series)
            score = feature.score if feature.score is not None else math.nan
            m.drift_score.labels(*series).set(score)
            for status in Status:
                m.drift_status.labels(*series, status.value).set(status is feature.status)
            before = self._statuses.get(series)
            self._statuses[series] = feature.status
            if before is not None and before is not feature.status:
                m.drift_status_changes.labels(*series, feature.status.value).inc()
                level = logging.WARNING if feature.status is Status.DRIFT else logging.INFO
                log.log(
                    level, "drift of %s on route %s (%s): %s -> %s (%s %s)",
                    feature.name, report.route, report.target, before.value,
                    feature.status.value, feature.statistic.value,
                    "n/a" if feature.score is None else f"{feature.score:.3f}",
                )  # fmt: skip
        return published

    def _forget(self, series: Series) -> None:
        del self._statuses[series]
        self._metrics.drift_score.remove(*series)
        for status in Status:
            self._metrics.drift_status.remove(*series, status.value)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:
                # A database hiccup must not stop the loop; the next refresh tries again.
                log.exception("refreshing the drift gauges failed")
