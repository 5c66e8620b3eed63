"""Unparking: a person returns a parked review item to the queue. The one operation the
reviewer API and the web UI share.

An item is parked when its leases keep running out (``queue.DEFAULT_MAX_EXPIRIES``): someone
should look at it before it is handed out again. A lead or an admin (within their key's routes
and tiers) unparks it: it goes back to ``pending``, or to ``disputed`` when two reviewers had
already decided it differently, with its expiries counted from zero again. The change, its
history row and its audit event are written in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import Actor
from service.audit.events import record_event
from service.auth import Principal, Role
from service.errors import ReviewConflict
from service.review import queue
from service.review.decisions import item_not_found
from service.review.queue import ItemNotFound, ItemState, NotParked
from service.review.visibility import may_see

if TYPE_CHECKING:
    from service.gateway.parts import Gateway

UNPARK_ROLES = (Role.LEAD, Role.ADMIN)


def may_unpark(principal: Principal) -> bool:
    return principal.role in UNPARK_ROLES


async def unpark(
    gw: Gateway, principal: Principal, item_id: str, now: datetime, audit: Actor
) -> ItemState:
    """Return the parked item to the queue; its new state. ``GatewayError``: 404 for an item
    that does not exist or lies outside the key's routes and tiers, 409 for one not parked."""
    async with gw.sessions() as session:
        try:
            item = await queue.get(session, item_id)
        except ItemNotFound as exc:
            raise item_not_found(item_id) from exc
    if not may_see(principal, item):
        raise item_not_found(item_id)

    async def audited(session: AsyncSession, state: ItemState) -> None:
        await record_event(
            session, audit, "review.unpark", f"review_item:{item_id}",
            before={"state": ItemState.PARKED.value, "expiries": item.expiries},
            after={"state": state.value, "expiries": 0},
        )  # fmt: skip

    try:
        return await queue.unpark(gw.sessions, item_id, principal.key_id, now, audited)
    except ItemNotFound as exc:
        raise item_not_found(item_id) from exc
    except NotParked as exc:
        raise ReviewConflict(
            f"Review item '{item_id}' is {exc.state}, not parked: only a parked item can be "
            "unparked."
        ) from exc
