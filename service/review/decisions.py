"""Deciding a claimed review item (and keeping its claim alive): the operations the reviewer
API and the web UI share.

``decide`` checks a correction against the route's output contract, records the decision on the
caller's live claim (``queue.decide``), turns the queue's refusals into the gateway's errors and
announces the decision to the route's callback. The handlers (``service.review.api`` and
``service.review.ui``) only translate their request into a ``DecisionOrder`` and the
``Decision``, or the ``GatewayError``, back into their response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import Actor
from service.audit.events import record_event
from service.errors import GatewayError, ReviewConflict, ReviewDecisionInvalid, ReviewItemNotFound
from service.guard.route_guard import RouteContract
from service.review import queue
from service.review.queue import (
    AlreadyDecided,
    Decision,
    DecisionKind,
    InvalidDecision,
    ItemNotFound,
    StaleClaim,
)

if TYPE_CHECKING:
    from service.gateway.parts import Gateway


@dataclass(frozen=True, slots=True)
class DecisionOrder:
    """A reviewer's decision on the item they claimed under ``token``."""

    item_id: str
    token: int
    reviewer: str
    kind: DecisionKind
    payload: str | None  # the corrected answer (correct), the reason (reject), None (approve)
    now: datetime
    audit: Actor | None = None  # who decides, for the audit trail


def item_not_found(item_id: str) -> ReviewItemNotFound:
    return ReviewItemNotFound(f"No review item '{item_id}'.")


def stale_claim(item_id: str) -> ReviewConflict:
    return ReviewConflict(
        f"The claim on review item '{item_id}' is not current: its token is stale or its "
        "lease ran out. Claim an item again."
    )


def _refusal(item_id: str, exc: Exception) -> GatewayError:
    """The gateway's error for a queue refusal (``ItemNotFound``, ``StaleClaim``...)."""
    if isinstance(exc, StaleClaim):
        return stale_claim(item_id)
    if isinstance(exc, AlreadyDecided):
        return ReviewConflict(f"Review item '{item_id}' was already decided differently.")
    if isinstance(exc, InvalidDecision):
        return ReviewDecisionInvalid(f"Invalid decision: {exc}.")
    return item_not_found(item_id)


def check_corrected_answer(contract: RouteContract | None, answer: str) -> None:
    """A correction follows the route's output schema; on a route reviewed without a schema any
    text is an answer; where the route is unknown, it must at least be JSON."""
    if contract is not None and contract.validator is None:
        return
    if contract is None or contract.validator is None:
        try:
            orjson.loads(answer)
        except orjson.JSONDecodeError as exc:
            raise ReviewDecisionInvalid(
                "The corrected answer is not valid JSON.", param="corrected_answer"
            ) from exc
        return
    verdict = contract.validator.validate(answer)
    if not verdict.valid:
        raise ReviewDecisionInvalid(
            "The corrected answer breaks the route's output schema: " + "; ".join(verdict.errors),
            param="corrected_answer",
        )


def state_after(decision: Decision) -> queue.ItemState:
    """The item's state once ``decision`` is in: the decided state only for a final decision;
    a first of two decisions leaves it pending (for the other reviewer), a dispute disputed."""
    if decision.outcome is queue.Outcome.VOTED:
        return queue.ItemState.PENDING
    if decision.outcome is queue.Outcome.DISPUTED:
        return queue.ItemState.DISPUTED
    return queue.DECIDED_STATE[decision.kind]


def _with_decision(
    gw: Gateway, audit: Actor | None
) -> Callable[[AsyncSession, Decision], Awaitable[None]]:
    """What a new decision writes in its own transaction: its audit event and, for a held
    answer whose route names a callback, the callback's outbox row."""

    async def write(session: AsyncSession, decision: Decision) -> None:
        if audit is not None:
            await record_event(
                session, audit, f"review.{decision.kind.value}", f"review_item:{decision.item_id}",
                before={"state": "claimed", "token": decision.token},
                after={"state": state_after(decision).value,
                       "outcome": decision.outcome.value, "reviewer": decision.reviewer,
                       "reject_reason": decision.reject_reason,
                       "corrected": decision.corrected_answer is not None},
            )  # fmt: skip
        if decision.outcome is queue.Outcome.DECIDED:  # not a vote, not a dispute
            await gw.callbacks.enqueue(session, decision.item_id, decision.at)

    return write


async def renew(
    gw: Gateway, item_id: str, token: int, reviewer: str, now: datetime, lease_s: float
) -> datetime:
    """Extend the reviewer's live claim to ``now + lease_s``; the new lease end. 404 for an
    unknown item, 409 when the claim is no longer the reviewer's (stale token, lease ran out)."""
    try:
        return await queue.heartbeat(gw.sessions, item_id, token, reviewer, now, lease_s)
    except ItemNotFound as exc:
        raise item_not_found(item_id) from exc
    except StaleClaim as exc:
        raise stale_claim(item_id) from exc


async def decide(gw: Gateway, order: DecisionOrder) -> Decision:
    """Record the decision and post it to the route's callback; a ``GatewayError`` if refused.

    404 for an unknown item, 409 for a stale claim or a different earlier decision, 422 for a
    missing answer or reason, or a correction that breaks the route's output contract.
    """
    item_id = order.item_id
    try:
        if order.kind is DecisionKind.CORRECT and order.payload and order.payload.strip():
            async with gw.sessions() as session:
                item = await queue.get(session, item_id)
            route = gw.snapshot.current.routes.get(item.route)
            check_corrected_answer(route.contract if route else None, order.payload)
        decision = await queue.decide(
            gw.sessions, item_id, order.token, order.reviewer, order.kind, order.payload,
            order.now, _with_decision(gw, order.audit),
        )  # fmt: skip
    except (ItemNotFound, StaleClaim, AlreadyDecided, InvalidDecision) as exc:
        raise _refusal(item_id, exc) from exc
    if decision.outcome is queue.Outcome.DECIDED:
        gw.callbacks.decided(item_id)
    return decision
