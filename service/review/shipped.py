"""Review items that travel with request records (an escalated answer's item is written in its
record's transaction): from the plain data a record carries to the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service.review.queue import NewItem, enqueue_shipped


async def write_shipped_items(session: AsyncSession, attachments: list[dict[str, Any]]) -> None:
    """Queue the items; one already queued (its record shipped twice) is left as it is."""
    await enqueue_shipped(session, [_item(attachment) for attachment in attachments])


def _item(attachment: dict[str, Any]) -> NewItem:
    created_at = attachment["created_at"]
    if isinstance(created_at, str):  # spooled: times are ISO strings there
        created_at = datetime.fromisoformat(created_at)
    return NewItem(**{**attachment, "created_at": created_at})
