"""Drift monitoring for SREs: a route's drift report, and pinning its reference."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from monitoring.drift import SEVERITY, Bin, FeatureDrift, Status, worst
from service.api.deps import SRE_ROLES, require_roles
from service.audit.actor import api_actor
from service.auth import Principal
from service.drift.monitor import DriftMonitor, DriftReport, ReferenceSpan, Span
from service.errors import InvalidRequest

router = APIRouter(prefix="/v1/admin/drift", tags=["drift"])
SreKey = Annotated[Principal, Depends(require_roles(*SRE_ROLES))]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Times without a UTC offset, `since` not before `until`, or a range "
        "holding too few records for a reference."
    },
    404: {"description": "No such route."},
}


def monitor(request: Request) -> DriftMonitor:
    found: DriftMonitor = request.app.state.drift
    return found


def utc(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidRequest(f"'{name}' needs a UTC offset, e.g. 2026-12-02T10:00:00Z.", param=name)
    return value


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
    def of(cls, span: Span) -> ReferenceOut:
        assert isinstance(span, ReferenceSpan)
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
            route=r.route, target=r.target, reference=ReferenceOut.of(r.reference),
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


@router.get(
    "/{route}",
    summary="Drift of a route's current version",
    description=(
        "Each feature of the route's current version (tokens, latency, time to first token, "
        "finish reason, error class; with an output contract also confidence, escalations, "
        "schema validity and each categorical or number field of the answers; with reviews the "
        "reviewers' decisions), binned over the current window and over the version's "
        "reference, scored and judged `ok`, `warn`, `drift` or `insufficient`. The current "
        "window is the last LORAGATE_DRIFT_WINDOW_S seconds unless `since`/`until` say."
    ),
    response_model=DriftOut,
    responses=ERRORS,
)
async def status(
    route: str,
    request: Request,
    _: SreKey,
    since: Annotated[
        datetime | None, Query(description="Start of the current window (UTC offset needed).")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="End of the current window (default: now).")
    ] = None,
) -> DriftOut:
    report = await monitor(request).report(route, utc(since, "since"), utc(until, "until"))
    return DriftOut.of(report)


@router.put(
    "/{route}/reference",
    summary="Pin the reference of a route's current version",
    description=(
        "The route's records in [since, until), whichever versions served them, become the "
        "reference of its current version (their histograms are stored), in place of the "
        "automatic one: after a switch, the new version is held against what the route "
        "answered before. Refused (400) when the range holds fewer than "
        "LORAGATE_DRIFT_REFERENCE_MIN_SAMPLES records."
    ),
    response_model=PinnedOut,
    responses=ERRORS,
)
async def pin(route: str, request: Request, principal: SreKey, body: ReferenceIn) -> PinnedOut:
    since, until = utc(body.since, "since"), utc(body.until, "until")
    assert since is not None and until is not None
    actor = f"{principal.name} ({principal.key_id})"[-64:]
    audit = api_actor(principal, request)
    target, span = await monitor(request).pin(route, since, until, actor, audit)
    return PinnedOut(route=route, target=target, reference=ReferenceOut.of(span))


@router.delete(
    "/{route}/reference",
    summary="Unpin the reference of a route's current version",
    description="The version goes back to its automatic reference. Idempotent.",
    status_code=204,
    response_class=Response,
    responses=ERRORS,
)
async def unpin(route: str, request: Request, principal: SreKey) -> Response:
    await monitor(request).unpin(route, api_actor(principal, request))
    return Response(status_code=204)
