"""Risk tiers: how much human oversight a route's answers get. Pure.

A route declares ``risk: low | medium | high | critical`` (default ``medium``); each tier gives
the route's review policy its defaults, which the route's own ``review`` block may override:

- ``low``: no escalation except invalid answers, and a QA sample of the rest;
- ``medium``: answers below the confidence threshold are escalated (the policy's own defaults);
- ``high``: every answer is held for a person (``delivery: hold``);
- ``critical``: held, and decided by two distinct reviewers who agree (a disagreement goes to
  an adjudicator). A route may not lower that: its ``agreement_rate`` stays 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


DEFAULT_RISK = Risk.MEDIUM

TIER_DEFAULTS: Mapping[Risk, Mapping[str, Any]] = MappingProxyType(
    {
        Risk.LOW: MappingProxyType({"escalate": "never", "qa_rate": 0.05}),
        Risk.MEDIUM: MappingProxyType({"escalate": "below"}),
        Risk.HIGH: MappingProxyType({"escalate": "always", "delivery": "hold"}),
        Risk.CRITICAL: MappingProxyType(
            {"escalate": "always", "delivery": "hold", "agreement_rate": 1.0}
        ),
    }
)


class TierConflict(ValueError):
    """A route's review block names its risk tier itself (the tier is declared on the route)."""


def tier_policy(risk: Risk | str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The review policy of a route of this tier: the tier's defaults, then the route's own."""
    tier = Risk(risk)
    if overrides is not None and "risk" in overrides:
        raise TierConflict("declare 'risk' on the route itself, not under 'review'")
    return {**TIER_DEFAULTS[tier], **(overrides or {}), "risk": tier.value}
