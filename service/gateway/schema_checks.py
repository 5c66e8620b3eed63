"""Clients' ``response_format`` schemas, checked off the event loop, with bounded work.

``request_rules.prepare`` runs the cheap, linear bounds on the loop (bytes, depth and cost, see
``guard.schema.MAX_SCHEMA_COST``) through ``SchemaChecks.bounds``, which answers a schema it
has a verdict for by its hash instead (a flood of one refused 16 KiB schema cost 3 ms of the
event loop a request for the bounds alone, 0.07 ms for the hash). What is left, the 2020-12
meta-schema and the keyword rules, costs up to about 500 ms for a schema at the cost bound, so:

- it runs in worker processes (``worker_processes``): a thread would still hold the GIL
  against the event loop (measured: a normal request's p50 went from 1.5 to 17 ms while four
  clients kept one check thread busy);
- each verdict is kept by the schema's sha256 (canonical JSON, keys sorted): a schema sent
  again costs a hash, and a schema sent by many clients at once is checked once;
- checks waiting for a worker are served cheapest first, so a small schema waits at most for
  the checks already running, never behind a queue of large ones; the waiting line is bounded,
  and when it is full the costliest waiting check is refused with 503 ``schema_check_busy``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import multiprocessing
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson

from monitoring.metrics import Metrics
from service.errors import InvalidRequest, SchemaCheckBusy, ValueOutOfRange
from service.guard import Refusal, SchemaRefused, check_bounds

log = logging.getLogger(__name__)

Check = Callable[[dict[str, Any]], Refusal | None]


def worker_processes(workers: int) -> Callable[[], Executor]:
    """Worker processes started fresh (``spawn``: no copy of this process's threads and locks),
    each on its first check; they import only ``service.guard``."""

    def make() -> Executor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    return make


def _key(schema: dict[str, Any]) -> bytes:
    """The schema's sha256 over canonical JSON (keys sorted)."""
    return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()


def _error(verdict: Refusal) -> InvalidRequest:
    error = ValueOutOfRange if verdict.out_of_range else InvalidRequest
    return error(verdict.message, param="response_format")


class SchemaChecks:
    def __init__(
        self,
        check: Check,
        metrics: Metrics,
        *,
        executor: Callable[[], Executor],
        workers: int,
        max_waiting: int,
        cache_size: int,
    ) -> None:
        """``check`` runs in ``executor``'s workers (picklable, for processes): a Refusal, or
        None for a schema it accepts. ``workers`` is how many the executor runs at once."""
        self._check = check
        self._metrics = metrics
        self._make_executor = executor
        self._pool = executor()
        self._workers = workers
        self._max_waiting = max_waiting
        self._cache_size = cache_size
        self._running = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap by cost
        self._order = itertools.count()
        self._verdicts: OrderedDict[bytes, Refusal | None] = OrderedDict()
        self._checking: dict[bytes, asyncio.Future[Refusal | None]] = {}

    def bounds(self, schema: dict[str, Any]) -> int:
        """``check_bounds`` (its cost, or SchemaRefused), unless a verdict is kept: a schema
        refused before gets its refusal again (400) for a hash, one accepted costs nothing.
        A refusal of the bounds is kept like a worker's verdict."""
        try:
            key = _key(schema)
        except orjson.JSONEncodeError:  # nested past orjson's 254 levels: the depth bound says
            return check_bounds(schema)
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            verdict = self._verdicts[key]
            if verdict is not None:
                self._metrics.client_schema_checks.labels("cached").inc()
                raise _error(verdict)
            return 0
        try:
            return check_bounds(schema)
        except SchemaRefused as exc:
            self._keep(key, Refusal(str(exc), exc.out_of_range))
            raise

    async def check(self, schema: dict[str, Any], cost: int) -> None:
        """Raise the schema's refusal (400), or ``SchemaCheckBusy`` (503) when shed."""
        key = _key(schema)
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            self._metrics.client_schema_checks.labels("cached").inc()
            verdict = self._verdicts[key]
        else:
            checking = self._checking.get(key)
            if checking is None:
                checking = asyncio.ensure_future(self._judge(key, schema, cost))
                self._checking[key] = checking
            # Shielded: a client that leaves does not cancel a check others may be waiting on.
            verdict = await asyncio.shield(checking)
        if verdict is not None:
            raise _error(verdict)

    async def close(self) -> None:
        """Waits for a check still running (at most one check's time): a worker process left
        behind would leak its queues' semaphores."""
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    async def _judge(self, key: bytes, schema: dict[str, Any], cost: int) -> Refusal | None:
        try:
            await self._turn(cost)
            verdict = await self._run(schema)
        except SchemaCheckBusy:
            self._metrics.client_schema_checks.labels("shed").inc()
            raise
        finally:
            del self._checking[key]
        self._metrics.client_schema_checks.labels("checked").inc()
        self._keep(key, verdict)
        return verdict

    def _keep(self, key: bytes, verdict: Refusal | None) -> None:
        self._verdicts[key] = verdict
        if len(self._verdicts) > self._cache_size:
            self._verdicts.popitem(last=False)

    async def _run(self, schema: dict[str, Any]) -> Refusal | None:
        """One check on the worker this task was given; the worker is handed on when the check
        is done in the worker, not when an awaiting task gives up."""
        loop = asyncio.get_running_loop()
        try:
            done: Future[Refusal | None] = self._pool.submit(self._check, schema)
        except BrokenProcessPool:
            self._release()
            raise self._replace_pool() from None
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        try:
            return await asyncio.wrap_future(done)
        except BrokenProcessPool:
            raise self._replace_pool() from None

    def _replace_pool(self) -> SchemaCheckBusy:
        """A worker died (killed, out of memory): new workers for the next checks; this one is
        answered 503 and may be sent again."""
        log.error("a schema check worker died; starting new ones")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._make_executor()
        return SchemaCheckBusy("The schema check was interrupted; send the request again.")

    async def _turn(self, cost: int) -> None:
        """Wait for a free worker; cheaper checks are served first."""
        if self._running < self._workers and not self._waiting:
            self._running += 1
            return
        if len(self._waiting) >= self._max_waiting:
            costliest = max(self._waiting)
            if costliest[0] <= cost:
                raise SchemaCheckBusy(BUSY)
            self._waiting.remove(costliest)
            heapq.heapify(self._waiting)
            costliest[2].set_exception(SchemaCheckBusy(BUSY))
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (cost, next(self._order), turn))
        try:
            await turn  # _release hands its worker over: the running count stays
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._release()  # the worker was handed over just before the cancel
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._running -= 1


BUSY = (
    "Too many response_format schemas are being checked right now; retry shortly, or send a "
    "smaller schema (smaller ones are checked first)."
)
