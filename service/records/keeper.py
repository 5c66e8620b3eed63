"""Where every finished request's record goes: appended to the local spool before the answer's
last byte is sent, and, for a held answer, committed with its review item before the 202.

The shipper (``service.records.shipper``) moves spooled records into the database; nothing
here waits on the database except ``hold``, which must (the client is handed a review id that
has to exist).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from monitoring.metrics import Metrics
from service.errors import RecordsUnavailable, ReviewStoreUnavailable
from service.records.draft import FinishedRecord, encode
from service.records.spool import Spool
from service.settings import WhenFull

log = logging.getLogger(__name__)

DROP_LOG_EVERY_S = 10.0
StoreNow = Callable[[AsyncSession, list[FinishedRecord]], Awaitable[None]]


class RecordKeeper:
    def __init__(
        self,
        spool: Spool,
        when_full: WhenFull,
        metrics: Metrics,
        sessions: async_sessionmaker[Any],
        store_now: StoreNow,
        hold_timeout_s: float,
    ) -> None:
        self._spool = spool
        self._when_full = when_full
        self._metrics = metrics
        self._sessions = sessions
        self._store_now = store_now
        self._hold_timeout_s = hold_timeout_s
        self._last_drop_log = 0.0

    def admit(self) -> None:
        """Refuse a request up front when its record could not be kept (503)."""
        if self._when_full is WhenFull.REFUSE and self._spool.full:
            raise RecordsUnavailable(
                "The gateway cannot record requests right now (its record spool is full); "
                "retry later."
            )

    def keep(self, record: FinishedRecord) -> None:
        """Append the record to the spool (never blocks on the database)."""
        if self._spool.full and (
            self._when_full is WhenFull.DROP or record.row["error_code"] == RecordsUnavailable.code
        ):
            self._dropped("spool_full", "the record spool is full")
            return
        try:
            self._spool.append(encode(record))
        except OSError as exc:
            self._dropped("spool_write_failed", f"appending to the spool failed: {exc}")

    async def hold(self, record: FinishedRecord) -> None:
        """Commit a held answer's record and review item now, or raise 503 (no id handed out)."""
        try:
            async with asyncio.timeout(self._hold_timeout_s), self._sessions.begin() as session:
                await self._store_now(session, [record])
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("storing held answer %s failed: %s: %s", record.row["id"],
                        type(exc).__name__, exc)  # fmt: skip
            raise ReviewStoreUnavailable(
                "The answer is held for review, but the review could not be stored; retry later."
            ) from exc

    def _dropped(self, reason: str, why: str) -> None:
        self._metrics.records_dropped.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning("request record dropped: %s (see loragate_records_dropped_total)", why)
