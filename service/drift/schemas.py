"""What the drift API answers and takes; the CLI and the HTML report read the same models."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from service.drift.statistics import SEVERITY, Status, worst

if TYPE_CHECKING:
    from service.drift.monitor import DriftReport, ReferenceSpan, Span
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
        description="Chi-square test of homogeneity on the same bins; null when the counts are "
        "too small for it."
    )
    status: Status = Field(
        description="`ok`, `warn`, `drift`, or `insufficient` (too few values on either side)."
    )
    threshold: ThresholdOut
    reference: list[BinOut] = Field(description="The reference's bins.")
    current: list[BinOut] = Field(description="The current window's bins, aligned with them.")

    @classmethod
    def of(cls, f: FeatureDrift) -> FeatureOut:
        return cls(
            name=f.name, kind=f.kind.value, statistic=f.statistic.value,
            score=None if f.score is None else round(f.score, 6),
            p_value=None if f.p_value is None else round(f.p_value, 6), status=f.status,
            threshold=ThresholdOut(warn=f.bands.warn, drift=f.bands.drift),
            reference=[BinOut.of(b) for b in f.reference],
            current=[BinOut.of(b) for b in f.current],
        )  # fmt: skip


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

    @classmethod
    def of_reference(cls, span: ReferenceSpan) -> ReferenceOut:
        return cls(since=span.since, until=span.until, samples=span.samples, source=span.source)


class DriftOut(BaseModel):
    route: str
    target: str = Field(description="The route's current version (stable target).")
    reference: ReferenceOut
    current: SpanOut
    features: list[FeatureOut]

    @classmethod
    def of(cls, r: DriftReport) -> DriftOut:
        return cls(
            route=r.route, target=r.target, reference=ReferenceOut.of_reference(r.reference),
            current=SpanOut.of(r.current), features=[FeatureOut.of(f) for f in r.features],
        )  # fmt: skip

    def overall(self) -> str:
        """The version's status at a glance: its worst feature's."""
        return worst([f.status for f in self.features]).value

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
