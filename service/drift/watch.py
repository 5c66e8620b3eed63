"""The drift and service gauges, refreshed on an interval by every gateway replica.

Each refresh reports every route's current version (a few aggregate queries per route, the
statistics in a worker thread) and sets ``loragate_drift_score`` and ``loragate_drift_status``
for the model's features, and ``loragate_service_value``, ``loragate_service_target`` and
``loragate_service_status`` for its service health. A feature whose status changed since the
last refresh is logged and counted, a service signal that changed is logged; the series of a
version a route no longer serves are removed, so an alert cannot hang on a version that left.
"""

from __future__ import annotations

import asyncio
import logging
import math

from monitoring.metrics import Metrics
from service.drift.monitor import DriftMonitor, DriftReport
from service.drift.slo import Health
from service.drift.statistics import Status
from service.errors import RouteNotFound

log = logging.getLogger(__name__)

Series = tuple[str, str, str]  # route, target, feature or service signal


class DriftWatch:
    def __init__(self, monitor: DriftMonitor, metrics: Metrics, interval_s: float) -> None:
        self._monitor = monitor
        self._metrics = metrics
        self._interval_s = interval_s
        self._statuses: dict[Series, Status] = {}
        self._service: dict[Series, Health] = {}

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
                seen |= {s for s in (*self._statuses, *self._service) if s[0] == route}
                continue
            seen |= self.publish(report)
        for gone in set(self._statuses) - seen:
            self._forget(gone)
        for gone in set(self._service) - seen:
            self._forget_service(gone)

    def publish(self, report: DriftReport) -> set[Series]:
        return self._publish_features(report) | self._publish_service(report)

    def _publish_features(self, report: DriftReport) -> set[Series]:
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

    def _publish_service(self, report: DriftReport) -> set[Series]:
        m = self._metrics
        published: set[Series] = set()
        for signal in report.service.signals:
            series = (report.route, report.target, signal.signal.value)
            published.add(series)
            m.service_value.labels(*series).set(
                signal.value if signal.value is not None else math.nan
            )
            m.service_target.labels(*series).set(signal.target)
            for health in Health:
                m.service_status.labels(*series, health.value).set(health is signal.status)
            before = self._service.get(series)
            self._service[series] = signal.status
            if before is not None and before is not signal.status:
                level = logging.WARNING if signal.status is Health.BREACH else logging.INFO
                log.log(
                    level, "service %s on route %s (%s): %s -> %s (%s, target %g)",
                    signal.signal.value, report.route, report.target, before.value,
                    signal.status.value,
                    "n/a" if signal.value is None else f"{signal.value:.4g}", signal.target,
                )  # fmt: skip
        return published

    def _forget(self, series: Series) -> None:
        del self._statuses[series]
        self._metrics.drift_score.remove(*series)
        for status in Status:
            self._metrics.drift_status.remove(*series, status.value)

    def _forget_service(self, series: Series) -> None:
        del self._service[series]
        self._metrics.service_value.remove(*series)
        self._metrics.service_target.remove(*series)
        for health in Health:
            self._metrics.service_status.remove(*series, health.value)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:
                # A database hiccup must not stop the loop; the next refresh tries again.
                log.exception("refreshing the drift gauges failed")
