"""Queries, grouped by table. Callers own the transaction (``async with session.begin()``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Route


async def list_routes(session: AsyncSession) -> Sequence[Route]:
    return (await session.scalars(select(Route).order_by(Route.name))).all()


async def upsert_route(session: AsyncSession, values: dict[str, Any]) -> None:
    existing = await session.get(Route, values["name"])
    if existing is None:
        session.add(Route(**values))
        return
    for field, value in values.items():
        setattr(existing, field, value)
