"""Proposing a route's escalation threshold from its reviewed answers (``loragate reviews
thresholds``): fit on one half of them, measured on the other, with the escalations a day it
would send at the recent rate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from service.review import calibration_reads
from service.review.calibration import Calibration, Proposal, calibration, in_check_half
from service.review.calibration import propose_threshold as fit_threshold
from service.review.calibration_reads import Rate
from service.review.model import Scope

RATE_WINDOW = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class ThresholdReport:
    route: str
    target: str | None  # the version judged; None when the route has no reviewed answers
    calibration: Calibration | None  # of its reviewed answers
    proposal: Proposal | None
    rate: Rate | None  # its answers under the proposed threshold, over the recent window


async def propose_threshold(
    sessions: async_sessionmaker[Any], route: str, target: str | None, target_precision: float,
    now: datetime, since: datetime | None = None,
) -> ThresholdReport:  # fmt: skip
    """The threshold for ``target`` (by default the version reviewed last) on ``route``."""
    async with sessions() as session:
        version = target or await calibration_reads.latest_target(session, route)
        if version is None:
            return ThresholdReport(route, None, None, None, None)
        found = await calibration_reads.reviewed(session, since, Scope(route=route), version)
        items = found.get((route, version), [])
        fit = [r.answer for r in items if not in_check_half(r.item_id)]
        check = [r.answer for r in items if in_check_half(r.item_id)]
        proposal = fit_threshold(fit, check, target_precision)
        rate = None
        if proposal.threshold is not None:
            rate = await calibration_reads.answer_rate(
                session, route, version, proposal.threshold, now - RATE_WINDOW, now
            )
    return ThresholdReport(route, version, calibration([r.answer for r in items]), proposal, rate)
