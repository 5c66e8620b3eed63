"""How fast the shipper moves spooled records into the database (the backlog drain rate).

    python bench/bench_shipper.py [--records 30000] [--postgres]

Starts the shipper as the gateway builds it, then appends --records realistic records (bodies
of a short chat exchange, every tenth escalated with a review item) as fast as it can and
times it from the first append until the spool is empty, on SQLite (a file) and, with
--postgres, on a fresh database on 127.0.0.1:5432. Prints records per second per database.
Compare it with the gateway's full-speed request rate from bench/bench_gateway.py on the same
machine: a backlog left by an outage drains while traffic goes on only if this rate is well
above that one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.trace import NoOpTracer  # noqa: E402

from monitoring.metrics import Metrics  # noqa: E402
from service.db.migrations import upgrade  # noqa: E402
from service.db.session import create_engine  # noqa: E402
from service.records.draft import FinishedRecord, encode  # noqa: E402
from service.records.service import shipping  # noqa: E402
from service.records.shipper import Shipper  # noqa: E402
from service.records.spool import Spool  # noqa: E402
from service.review.queue import NewItem  # noqa: E402
from service.review.shipped import write_shipped_items  # noqa: E402
from tests.conftest import fresh_database  # noqa: E402

REQUEST = '{"model": "chat", "messages": [{"role": "user", "content": "My invoice is wrong."}]}'
ANSWER = '{"id": "x", "choices": [{"message": {"content": "{\\"category\\": \\"billing\\"}"}}]}'


def record(i: int) -> FinishedRecord:
    row = {
        "id": uuid.uuid4().hex, "created_at": datetime.now(UTC), "endpoint": "chat",
        "key_id": "0123456789ab", "route": "chat", "target": "base", "arm": "stable",
        "replica": "http://127.0.0.1:8001", "stream": False, "status_code": 200,
        "error_type": None, "error_code": None, "latency_ms": 12.5, "ttft_ms": None,
        "tokens_in": 31, "tokens_out": 12, "finish_reason": "stop", "attempts": 1,
        "request_body": REQUEST, "response_body": ANSWER, "rollout_id": None,
        "shadow_of": None, "agreement": None, "schema_valid": True, "confidence": 0.8,
        "escalated": i % 10 == 0,
    }  # fmt: skip
    review = None
    if i % 10 == 0:
        review = NewItem(
            request_id=row["id"], route="chat", target="base", reason="low_confidence",
            answer='{"category": "billing"}', created_at=row["created_at"],
            item_id=uuid.uuid4().hex,
        )  # fmt: skip
    return FinishedRecord(row, review)


async def drain_rate(url: str, records: int, directory: Path) -> float:
    """Records per second from the first append of the backlog to an empty spool."""
    spool = Spool(directory, max_bytes=10**12)
    spool.open()
    metrics = Metrics()
    shipper = Shipper(
        spool, lambda: create_engine(url), shipping(write_shipped_items), metrics, NoOpTracer(),
        interval_s=0.05, batch_records=5000, fsync_interval_s=0.2,
    )  # fmt: skip
    shipper.start()
    spool.append(encode(record(1)))  # warm-up: the shipper's first connection is not timed
    while spool.size_bytes:  # noqa: ASYNC110 (the spool offers a size, not an event)
        await asyncio.sleep(0.01)
    backlog = [encode(record(i)) for i in range(records)]
    started = time.perf_counter()
    for payload in backlog:
        spool.append(payload)
    while spool.size_bytes:  # noqa: ASYNC110 (the spool offers a size, not an event)
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - started
    shipper.stop(60)
    spool.close()
    return records / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
        await asyncio.to_thread(upgrade, url)
        rate = await drain_rate(url, args.records, work / "spool-sqlite")
        print(f"sqlite      {args.records} records  {rate:8.0f} records/s")
        if args.postgres:
            async with fresh_database("postgres", work) as pg:
                rate = await drain_rate(pg, args.records, work / "spool-pg")
            print(f"postgresql  {args.records} records  {rate:8.0f} records/s")


if __name__ == "__main__":
    asyncio.run(main())
