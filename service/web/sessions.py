"""Sessions of the pages for people (the reviewer UI, the rollout console), kept in the
database so any gateway replica serves them.

Signing in turns a person's API key into a random session token: the browser's cookie holds
the token, the table its sha256 and the key's id, never the key. A session ends at its expiry
(``LORAGATE_REVIEW_SESSION_TTL_S``), at sign-out, or when its key is revoked (the key is looked
up on every request, as for the JSON API). Expired rows are deleted at each sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import ReviewSession

# Longest token accepted from a cookie (ours are 43 characters): anything longer is not ours.
MAX_TOKEN_CHARS = 64


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(session: AsyncSession, key_id: str, now: datetime, ttl_s: float) -> str:
    """A new session for ``key_id``; returns the token for the cookie."""
    await session.execute(delete(ReviewSession).where(ReviewSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        ReviewSession(
            token_hash=_hash(token),
            key_id=key_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    return token


async def key_of(session: AsyncSession, token: str | None, now: datetime) -> str | None:
    """The key id of a live session, or None."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    key_id = await session.scalar(
        select(ReviewSession.key_id).where(
            ReviewSession.token_hash == _hash(token), ReviewSession.expires_at > now
        )
    )
    return str(key_id) if key_id is not None else None


async def close_session(session: AsyncSession, token: str | None) -> None:
    if token and len(token) <= MAX_TOKEN_CHARS:
        await session.execute(delete(ReviewSession).where(ReviewSession.token_hash == _hash(token)))
