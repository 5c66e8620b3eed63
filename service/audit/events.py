"""``record_event``: the one writer of audit events, called by every change in its own
transaction, so a change and its event are committed (or rolled back) together. Each event is
a link of the hash chain (``service.audit.chain``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.actor import Actor
from service.audit.chain import EventFields, Head, link_hash
from service.clock import now
from service.db.models import AuditChainHead, AuditEvent
from service.db.session import AUDIT_SIGNING_KEY


class ChainHeadMissing(RuntimeError):
    """The audit chain's head row is gone: no event can be chained (nor any audited change
    made) until it is restored; ``loragate audit verify`` reports it."""


async def lock_head(session: AsyncSession) -> Head:
    """The chain head, locked until the caller's transaction ends, so that chain writers take
    turns. An UPDATE rather than ``SELECT ... FOR UPDATE``: SQLite reads start no transaction,
    and only a write takes its lock."""
    locked = await session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == 1)
        .values(last_id=AuditChainHead.last_id)
        .returning(AuditChainHead.last_id, AuditChainHead.hash)
        .execution_options(synchronize_session=False)
    )
    row = locked.one_or_none()
    if row is None:
        raise ChainHeadMissing("the audit chain head row (audit_chain_head) is missing")
    return Head(row.last_id, row.hash)


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # As the JSON column gives it back (tuples become lists, keys strings): what gets hashed.
    return json.loads(json.dumps(dict(value))) if value is not None else None


async def record_event(
    session: AsyncSession,
    actor: Actor,
    action: str,
    obj: str,
    *,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> int:
    """Add the event to the caller's transaction (flushed with the change it describes); its id.

    ``action`` is ``domain.verb`` (``key.revoke``), ``obj`` is ``kind:id`` (``key:3f2a...``);
    ``before``/``after`` summarise the object (never a secret). The chain head stays locked
    until the transaction ends: other audited changes wait for it, so call this late in the
    transaction. Signed with the key the session carries (``session_factory``), if any.
    """
    head = await lock_head(session)
    # One past the newest id, should a row have been added by hand past the head (verify names it).
    newest = await session.scalar(select(func.max(AuditEvent.id)))
    event = EventFields(
        id=max(head.last_id, newest or 0) + 1, at=now(), actor=actor.id,
        actor_role=actor.role, os_user=actor.os_user, action=action, object=obj[:300],
        before=_plain(before), after=_plain(after), request_id=actor.request_id,
        client=actor.client,
    )  # fmt: skip
    digest = link_hash(head.hash, event, session.info.get(AUDIT_SIGNING_KEY, b""))
    session.add(
        AuditEvent(
            id=event.id, at=event.at, actor=event.actor, actor_role=event.actor_role,
            os_user=event.os_user, action=event.action, object=event.object,
            before=event.before, after=event.after, request_id=event.request_id,
            client=event.client, prev_hash=head.hash, hash=digest,
        )
    )  # fmt: skip
    await session.flush()
    await session.execute(
        update(AuditChainHead)
        .where(AuditChainHead.id == 1)
        .values(last_id=event.id, hash=digest)
        .execution_options(synchronize_session=False)
    )
    return event.id
