"""Deterministic draws from a request id. Pure.

QA sampling, agreement sampling and ``escalate: sample`` each draw a number in [0, 1) from the
request id and what it is drawn for, so a request is sampled the same way however often it is
judged (a retry, another replica), and the three draws are independent of each other.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

SCALE = float(2**64)


class Purpose(StrEnum):
    SAMPLE = "sample"  # escalate: sample
    QA = "qa"  # QA sample of answers nobody escalated
    AGREEMENT = "agreement"  # an item given to two reviewers independently


def draw(request_id: str, purpose: Purpose) -> float:
    """Uniform in [0, 1), a function of the request id and the purpose alone."""
    digest = hashlib.sha256(f"{purpose.value}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / SCALE
