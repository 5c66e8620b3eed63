"""``record_event``: the one writer of audit events, called by every change in its own
transaction, so a change and its event are committed (or rolled back) together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import Actor
from service.clock import now
from service.db.models import AuditEvent


async def record_event(
    session: AsyncSession,
    actor: Actor,
    action: str,
    obj: str,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """Add the event to the caller's transaction (flushed with the change it describes).

    ``action`` is ``domain.verb`` (``key.revoke``), ``obj`` is ``kind:id`` (``key:3f2a...``);
    ``before``/``after`` summarise the object (never a secret).
    """
    session.add(
        AuditEvent(
            at=now(), actor=actor.id, actor_role=actor.role, os_user=actor.os_user,
            action=action, object=obj[:300],
            before=dict(before) if before is not None else None,
            after=dict(after) if after is not None else None,
            request_id=actor.request_id, client=actor.client,
        )
    )  # fmt: skip
    await session.flush()
