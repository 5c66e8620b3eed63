"""Telling every gateway that routes, rollouts or keys changed, on PostgreSQL at once.

Each writer of such a change calls ``announce`` in the transaction that makes it: PostgreSQL
delivers a ``NOTIFY`` only when its transaction commits (and not at all if it rolls back), so a
gateway that hears it and reloads reads the change. On SQLite ``announce`` does nothing and
gateways see changes at their next periodic refresh. ``change_listener`` holds the other end.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "loragate_changes"


async def announce(session: AsyncSession, what: str) -> None:
    """Queue a notification of ``what`` changed (e.g. ``route:chat``), sent on commit.

    The payload is for logs only: a gateway that hears any notification reloads everything.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_notify(CHANNEL, what[:200])))
