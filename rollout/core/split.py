"""Which arm a request plays: a sticky split of subjects, and sampling of shadow copies.

A subject hashes with the rollout id into one of 10,000 buckets; the canary serves the buckets
below ``weight * 100``. Raising the weight only adds buckets, so a subject in the canary stays
there, and a new rollout (a new id) reshuffles everyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

BUCKETS = 10_000
PER_PERCENT = BUCKETS // 100


class Arm(StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    SHADOW = "shadow"


def bucket(rollout_id: str, subject: str) -> int:
    digest = hashlib.blake2b(f"{rollout_id}\x00{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Split:
    """The traffic a rollout takes right now: a canary weight or a shadow sample, in percent."""

    rollout_id: str
    candidate: str
    canary_weight: int = 0
    shadow_percent: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    arm: Arm
    target: str
    shadow_target: str | None = None


def decide(split: Split | None, stable: str, subject: str, request_id: str) -> Decision:
    """Where one request goes. Clients have no say beyond their subject."""
    if split is None:
        return Decision(Arm.STABLE, stable)
    if (
        split.canary_weight
        and bucket(split.rollout_id, subject) < split.canary_weight * PER_PERCENT
    ):
        return Decision(Arm.CANARY, split.candidate)
    # Shadow copies are sampled per request, so every kind of subject gets compared.
    if split.shadow_percent and (
        bucket(split.rollout_id, request_id) < split.shadow_percent * PER_PERCENT
    ):
        return Decision(Arm.STABLE, stable, split.candidate)
    return Decision(Arm.STABLE, stable)
