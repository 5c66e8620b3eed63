"""Query parameters every HTTP surface reads the same way."""

from __future__ import annotations

from datetime import datetime

from service.errors import InvalidRequest


def iso_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with its offset. Numbers are refused: pydantic would read `0.5` as a
    Unix time, which nobody filtering by time means."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 time with a UTC offset, e.g. 2026-12-01T00:00:00Z.",
            param=name,
        ) from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"'{name}' needs a UTC offset, e.g. 2026-12-02T10:00:00Z.", param=name)
    return parsed
