"""What the review queue holds, as values: an item's states, the kinds of decision and history
row, the views the store returns, and its refusals. Pure.

An item is ``pending`` until a reviewer claims it (``claimed``, under a lease and a fencing token:
``service.review.claims``); a decision makes it ``approved``, ``corrected`` or ``rejected``
(``service.review.decisions``). An item two reviewers decide independently is ``disputed`` when
they disagree, until an adjudicator decides it; one whose leases keep running out is ``parked``
for a person to look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

# Tokens and offsets live in INTEGER columns: larger numbers cannot name anything stored.
MAX_INT = 2**31 - 1


class ItemState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    APPROVED = "approved"
    CORRECTED = "corrected"
    REJECTED = "rejected"
    PARKED = "parked"
    DISPUTED = "disputed"  # two reviewers disagreed: waiting for an adjudicator


class DecisionKind(StrEnum):
    APPROVE = "approve"
    CORRECT = "correct"
    REJECT = "reject"


# History kinds besides the decisions.
EXPIRED = "expired"
PARKED = "parked"
VOTE = "vote"  # one of two independent decisions; its content is in review_votes
DISPUTED = "disputed"
UNPARKED = "unparked"  # a person returned a parked item to the queue


class Outcome(StrEnum):
    """What a decision did to its item."""

    DECIDED = "decided"  # the item's final decision
    VOTED = "voted"  # the first of two independent decisions: the item waits for another
    DISPUTED = "disputed"  # the second disagreed with the first: an adjudicator decides


DECIDED_STATE = {
    DecisionKind.APPROVE: ItemState.APPROVED,
    DecisionKind.CORRECT: ItemState.CORRECTED,
    DecisionKind.REJECT: ItemState.REJECTED,
}
KIND_OF_STATE = {state.value: kind for kind, state in DECIDED_STATE.items()}


class StaleClaim(Exception):
    """The claim token is not the item's current one, or its lease has run out."""


class AlreadyDecided(Exception):
    """The item was already decided, differently (or by someone else)."""


class ItemNotFound(Exception):
    """No review item has this id."""


class InvalidDecision(ValueError):
    """The decision lacks what its kind needs (a corrected answer, a reject reason)."""


class NotParked(Exception):
    """The item is not parked (so there is nothing to unpark); ``state`` is its state."""

    def __init__(self, item_id: str, state: str) -> None:
        super().__init__(item_id)
        self.state = state


@dataclass(frozen=True, slots=True)
class ReviewItemView:
    id: str
    request_id: str
    route: str
    target: str
    reason: str
    priority: int
    state: ItemState
    created_at: datetime
    claimed_by: str | None
    lease_until: datetime | None
    claim_token: int
    expiries: int
    answer: str
    request_body: str | None
    confidence: float | None
    field_confidence: Mapping[str, float] | None
    schema_errors: Sequence[Any] | None
    decided_at: datetime | None
    decided_by: str | None
    corrected_answer: str | None
    reject_reason: str | None
    risk: str = "medium"
    reviews_needed: int = 1
    votes: int = 0
    sla_breached_at: datetime | None = None

    @property
    def adjudication(self) -> bool:
        """Two reviewers disagreed on it: only an adjudicator decides it now."""
        return self.reviews_needed > 1 and self.votes >= self.reviews_needed


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    item: ReviewItemView
    token: int
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    item_id: str
    kind: DecisionKind
    reviewer: str
    token: int
    at: datetime
    corrected_answer: str | None
    reject_reason: str | None
    outcome: Outcome = Outcome.DECIDED


@dataclass(frozen=True, slots=True)
class Vote:
    """One reviewer's independent decision on an item that needs two."""

    item_id: str
    seq: int
    reviewer: str
    kind: DecisionKind
    at: datetime
    corrected_answer: str | None
    reject_reason: str | None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which items a reviewer may see and claim (a key's limits), and how to filter them."""

    routes: frozenset[str] | None = None  # the key's allowed routes (None: all)
    tiers: frozenset[str] | None = None  # the key's allowed risk tiers (None: all)
    route: str | None = None
    reason: str | None = None
    tier: str | None = None


EVERYTHING = Scope()  # an admin's view: every route and tier


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    item_id: str
    at: datetime
    reviewer: str
    kind: str
    claim_token: int
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: Mapping[str, int]  # per route: undecided items (pending or claimed)
    claimed: Mapping[str, int]  # per route: items held under a lease that has not run out
    oldest_pending_age_s: float | None  # oldest item nobody holds a live lease on
    parked: int
