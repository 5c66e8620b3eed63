"""The one clock: aware UTC times, and the two ways a time enters the code.

Every stored and compared time is UTC. SQLite hands times back without their offset
(``as_utc`` names them UTC); times from users must carry an offset (``require_utc``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A time read back from the database: naive means UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def require_utc(value: datetime) -> datetime:
    """A time given by a caller, in UTC; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(UTC)
