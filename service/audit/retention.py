"""Retention of audit events, apart from the records': kept forever unless a period is set."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from monitoring.shipper import Maintenance
from service.audit.store import prune_events
from service.clock import now


def audit_pruner(retention_days: float) -> Maintenance | None:
    """Delete audit events older than ``retention_days`` (None when 0: keep them forever)."""

    async def prune(sessions: async_sessionmaker[Any]) -> None:
        async with sessions.begin() as session:
            await prune_events(session, now() - timedelta(days=retention_days))

    return prune if retention_days > 0 else None
