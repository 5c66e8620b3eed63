"""A large export is written to disk as its rows are read: in batches from a server-side
cursor, with memory far below the size of the export, and files identical to the in-memory
split. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import ReviewItem
from service.db.session import create_engine, session_factory
from service.review import queue
from service.review.export import ExportFilters, build_export, example_line, split_lines

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ITEMS = 20_000
FILLER = "lorem ipsum dolor sit amet " * 55  # about 1.5 kB a request: about 30 MB in all


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield session_factory(engine)
    await engine.dispose()


def request_body(i: int) -> str:
    text = f"ticket {i % (ITEMS - 100)}: {FILLER}"  # the last 100 repeat earlier ones
    return json.dumps({"model": "triage", "messages": [{"role": "user", "content": text}]})


def new_item(i: int) -> queue.NewItem:
    return queue.NewItem(
        request_id=f"req-{i}", route="triage", target="m@1", reason="always",
        answer=f'{{"n": {i % (ITEMS - 100)}}}', created_at=NOW - timedelta(hours=1),
        request_body=request_body(i), item_id=f"item-{i:06d}",
    )  # fmt: skip


async def seed(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Approved items written straight into the table, a few thousand at a time."""
    for start in range(0, ITEMS, 5_000):
        items = [new_item(i) for i in range(start, min(start + 5_000, ITEMS))]
        async with sessions.begin() as session:
            await queue.enqueue_shipped(session, items)
    async with sessions.begin() as session:
        await session.execute(
            update(ReviewItem).values(
                state="approved", decided_at=NOW, decided_by="rev", claim_token=1
            )
        )


@pytest.mark.heavy
async def test_a_large_export_is_read_in_batches_in_flat_memory(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await seed(sessions)
    filters = ExportFilters(redact=False)
    batches: list[Any] = []
    async with sessions() as session:
        stream = session.stream

        async def spied(statement: Any, *args: Any, **kwargs: Any) -> Any:
            batches.append(statement.get_execution_options().get("yield_per"))
            return await stream(statement, *args, **kwargs)

        session.stream = spied  # type: ignore[method-assign]
        tracemalloc.start()
        try:
            export = await build_export(session, filters, tmp_path / "out", now=NOW)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert batches == [500]  # one query, read 500 rows at a time from a server-side cursor
    counts = export.manifest["counts"]
    assert counts["approved"] == ITEMS and counts["duplicates_removed"] == 100
    assert counts["train"] + counts["validation"] == ITEMS - 100
    written = sum(export.path(split).stat().st_size for split in ("train", "validation"))
    assert written > 25_000_000
    # Generous, and still far below the export itself (an in-memory build holds it thrice).
    assert peak < 12_000_000, f"peak {peak / 1e6:.1f} MB for {written / 1e6:.1f} MB written"

    # The same files as the in-memory split of the same lines.
    lines = [
        example_line(request_body(i), f'{{"n": {i % (ITEMS - 100)}}}', redacted=False)
        for i in range(ITEMS)
    ]
    train, val = split_lines([x for x in lines if x], val_fraction=0.1, seed=0)
    for split, expected in (("train", train), ("validation", val), ("all", [*train, *val])):
        data = export.path(split).read_bytes()
        assert data == "".join(f"{line}\n" for line in expected).encode()
        assert hashlib.sha256(data).hexdigest() == export.manifest["sha256"][split]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "all.jsonl", "train.jsonl", "validation.jsonl",
    ]  # fmt: skip


async def test_a_temporary_export_is_removed_when_discarded(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        export = await build_export(session, ExportFilters(), now=NOW)
    assert export.path("all").exists() and export.train_lines == []
    export.discard()
    assert not export.directory.exists()
