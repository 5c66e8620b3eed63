"""What the drift API answers and takes; the CLI and the HTML report read the same models."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from service.drift.slo import Health, Signal
from service.drift.statistics import SEVERITY, Status

if TYPE_CHECKING:
    from service.drift.minimums import Measured
    from service.drift.monitor import DriftReport, ReferenceSpan, Span
    from service.drift.slo import ServiceHealth, SignalHealth
    from service.drift.statistics import Bin, FeatureDrift


class BinOut(BaseModel):
    label: str = Field(description="A number bin `[low, high)` (`< x`, `>= x` at the ends), "
                       "or a category.")  # fmt: skip
    count: int
    share: float = Field(description="count divided by the side's total.")

    @classmethod
    def of(cls, b: Bin) -> BinOut:
        return cls(label=b.label, count=b.count, share=round(b.share, 6))


class ThresholdOut(BaseModel):
    warn: float = Field(description="A score at or over this is `warn`.")
    drift: float = Field(description="A score at or over this is `drift`.")


class FeatureOut(BaseModel):
    name: str = Field(description="e.g. `prompt_tokens`, `finish_reason`, `answer.category`.")
    kind: str = Field(description="`number` or `category`.")
    statistic: str = Field(
        description="`psi` (numbers: population stability index over the reference's quantile "
        "bins, each bin plus one) or `js` (categories: Jensen-Shannon distance, base 2)."
    )
    score: float | None = Field(description="The statistic; null when a side has no values.")
    p_value: float | None = Field(
        description="Chi-square test of homogeneity on the same bins (sparse bins pooled); null "
        "when a side is empty or one bin is left."
    )
    adjusted_p_value: float | None = Field(
        description="The p-value corrected across the route's features (Holm); null when the "
        "feature was not tested."
    )
    status: Status = Field(
        description="`warn` or `drift` when the score is over that band and the adjusted "
        "p-value at most the route's false-alarm rate; `ok` otherwise; `insufficient` with too "
        "few values on either side."
    )
    threshold: ThresholdOut
    reference: list[BinOut] = Field(description="The reference's bins.")
    current: list[BinOut] = Field(description="The current window's bins, aligned with them.")

    @classmethod
    def of(cls, f: FeatureDrift) -> FeatureOut:
        return cls(
            name=f.name, kind=f.kind.value, statistic=f.statistic.value,
            score=None if f.score is None else round(f.score, 6),
            p_value=_rounded(f.p_value), adjusted_p_value=_rounded(f.adjusted_p),
            status=f.status,
            threshold=ThresholdOut(warn=f.bands.warn, drift=f.bands.drift),
            reference=[BinOut.of(b) for b in f.reference],
            current=[BinOut.of(b) for b in f.current],
        )  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class SpanOut(BaseModel):
    since: datetime | None
    until: datetime | None = Field(description="Exclusive.")
    samples: int = Field(description="Request records of the version in the range.")

    @classmethod
    def of(cls, span: Span) -> SpanOut:
        return cls(since=span.since, until=span.until, samples=span.samples)


class ReferenceOut(SpanOut):
    source: str | None = Field(
        description="`pinned` (by an SRE), `rollout` (frozen at promotion: the rollout's "
        "windows), `first_records` (the version's first records as stable), or null while the "
        "version has too few records for one."
    )
    needed: int = Field(description="Records a reference needs.")
    ready: bool = Field(
        description="Its histograms are computed; while false, `samples` is what it holds so "
        "far and every feature is `insufficient`."
    )
    ready_in_s: float | None = Field(
        description="While not ready: seconds until it holds `needed` records at the rate of "
        "the last day; null when ready, or when the version had no traffic."
    )

    @classmethod
    def of_reference(cls, span: ReferenceSpan) -> ReferenceOut:
        return cls(
            since=span.since, until=span.until, samples=span.samples, source=span.source,
            needed=span.needed, ready=span.ready,
            ready_in_s=None if span.ready_in_s is None else round(span.ready_in_s, 1),
        )  # fmt: skip


class MeasuredOut(BaseModel):
    reference: int
    window: int
    false_alarms: float = Field(
        description="Share of windows of unchanged traffic with some feature at warn or drift."
    )
    drift_false_alarms: float = Field(description="... with some feature at drift.")
    moved_caught: float = Field(
        description="Share of windows that flag a category mix moved by Jensen-Shannon "
        "distance 0.16 (warn or drift)."
    )
    shuffled_caught: float = Field(
        description="Share of windows that read drift for shuffled labels (distance 0.42)."
    )

    @classmethod
    def of(cls, m: Measured) -> MeasuredOut:
        return cls(
            reference=m.reference, window=m.window, false_alarms=m.false_alarms,
            drift_false_alarms=m.drift_false_alarms, moved_caught=m.moved_caught,
            shuffled_caught=m.shuffled_caught,
        )  # fmt: skip


class JudgementOut(BaseModel):
    false_alarm_rate: float = Field(
        description="The share of windows of unchanged traffic in which the route may read "
        "warn or drift: the features' p-values are corrected together (Holm) at this rate."
    )
    p_value: float | None = Field(
        description="The route's own: its smallest adjusted p-value; null when none was tested."
    )
    tested: int = Field(description="Features with enough values for a test.")
    min_samples: int = Field(description="Values a feature needs in the current window.")
    reference_min_samples: int = Field(description="Records a reference needs.")
    measured: MeasuredOut | None = Field(
        description="What these minimums cost, from bench/drift_false_alarms.py (the row they "
        "are at least as strict as); null under the smallest row measured."
    )

    @classmethod
    def of(cls, r: DriftReport) -> JudgementOut:
        cost = r.rules.cost
        return cls(
            false_alarm_rate=r.judgement.false_alarm_rate, p_value=_rounded(r.judgement.p_value),
            tested=r.judgement.tested, min_samples=r.rules.minimum.current,
            reference_min_samples=r.rules.reference_min,
            measured=None if cost is None else MeasuredOut.of(cost),
        )  # fmt: skip


class SignalOut(BaseModel):
    signal: Signal = Field(
        description="`latency_p95_ms` (successful requests), `ttft_p95_ms` (successful "
        "streams), `error_rate` (5xx among all requests), `limit_rate` (successful answers "
        "that ended at a limit, finish_reason `length`)."
    )
    value: float | None = Field(description="In the current window; null without values.")
    target: float = Field(description="The route's target (or the gateway's default).")
    samples: int
    status: Health = Field(
        description="`breach` over the target, `ok` at or under it, `insufficient` with fewer "
        "than 20 values."
    )

    @classmethod
    def of(cls, s: SignalHealth) -> SignalOut:
        return cls(
            signal=s.signal, value=_rounded(s.value), target=s.target, samples=s.samples,
            status=s.status,
        )  # fmt: skip


class ServiceOut(BaseModel):
    status: Health = Field(description="`breach` if any signal is, else `ok` or `insufficient`.")
    signals: list[SignalOut]
    error_classes: dict[str, int] = Field(description="Requests per error code in the window.")

    @classmethod
    def of(cls, health: ServiceHealth) -> ServiceOut:
        return cls(
            status=health.status,
            signals=[SignalOut.of(s) for s in health.signals],
            error_classes=dict(health.error_classes),
        )


class DriftOut(BaseModel):
    route: str
    target: str = Field(description="The route's current version (stable target).")
    status: Status = Field(
        description="The version's drift status: its worst feature's (`insufficient` while "
        "none has enough values). Only the model's features: service health is `service`."
    )
    reference: ReferenceOut
    current: SpanOut
    judgement: JudgementOut
    features: list[FeatureOut]
    service: ServiceOut = Field(
        description="Latency, time to first token, errors and answers cut by a limit against "
        "the route's targets: they move with load, never drift."
    )

    @classmethod
    def of(cls, r: DriftReport) -> DriftOut:
        return cls(
            route=r.route, target=r.target, status=r.status,
            reference=ReferenceOut.of_reference(r.reference), current=SpanOut.of(r.current),
            judgement=JudgementOut.of(r), features=[FeatureOut.of(f) for f in r.features],
            service=ServiceOut.of(r.service),
        )  # fmt: skip

    def overall(self) -> str:
        """The version's drift status at a glance."""
        return self.status.value

    def worst_first(self) -> list[FeatureOut]:
        """The features, drift before warn before ok before insufficient, then by name."""
        return sorted(self.features, key=lambda f: (SEVERITY.index(f.status), f.name))


class ReferenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: datetime = Field(description="Start of the range, with a UTC offset.")
    until: datetime = Field(description="End of the range (exclusive), with a UTC offset.")


class PinnedOut(BaseModel):
    route: str
    target: str
    reference: ReferenceOut
