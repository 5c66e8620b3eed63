"""Retention of audit events, apart from the records': kept forever unless a period is set."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from service.audit.store import prune_events
from service.clock import now
from service.db.session import AUDIT_SIGNING_KEY, Maintenance


def audit_pruner(retention_days: float, signing_key: str = "") -> Maintenance | None:
    """Delete audit events older than ``retention_days`` (None when 0: keep them forever); the
    ``audit.prune`` event that records it is signed with ``signing_key``, if set."""

    async def prune(sessions: async_sessionmaker[Any]) -> None:
        async with sessions.begin() as session:
            # The shipper's sessions carry no key: this one signs the prune event with it.
            session.info[AUDIT_SIGNING_KEY] = signing_key.encode()
            await prune_events(session, now() - timedelta(days=retention_days))

    return prune if retention_days > 0 else None
