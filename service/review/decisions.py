"""Deciding a claimed review item: the one operation the reviewer API and the web UI share.

``decide`` checks a correction against the route's output contract, records the decision on the
caller's live claim (``queue.decide``), turns the queue's refusals into the gateway's errors and
announces the decision to the route's callback. The handlers (``service.review.api`` and
``service.review.ui``) only translate their request into a ``DecisionOrder`` and the
``Decision``, or the ``GatewayError``, back into their response.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import orjson

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
            order.now,
        )  # fmt: skip
    except (ItemNotFound, StaleClaim, AlreadyDecided, InvalidDecision) as exc:
        raise _refusal(item_id, exc) from exc
    gw.callbacks.decided(item_id)
    return decision
