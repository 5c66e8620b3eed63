"""Admits a request under its key's limits, and gives back what it did not use when it ends.

Keys without limits cost nothing here. A key with limits costs one round trip to the shared
store before the engine call and one, off the response path, after it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from monitoring.metrics import Metrics
from monitoring.outages import store_unreachable
from service.auth import Principal
from service.errors import LimitsUnavailable, RateLimited
from service.limits.quota import Window, duration, minute_of
from service.limits.redis_counters import RedisCounters
from service.limits.stores import Counters, DatabaseCounters, LocalCounters, Seen, Taking
from service.settings import Settings, WhenStoreDown

log = logging.getLogger(__name__)
# What an unreachable or failing store raises (a timeout is TimeoutError).
STORE_ERRORS = (SQLAlchemyError, RedisError, OSError, TimeoutError)
# How often a failing store is logged: every request would otherwise log it.
STORE_ERROR_LOG_EVERY_S = 10.0


@dataclass(slots=True)
class Grant:
    """An admitted request's share: ``headers`` are the x-ratelimit-* the client gets;
    ``local``: counted by this gateway alone while the shared store was down."""

    taking: Taking
    headers: dict[str, str] = field(default_factory=dict)
    local: bool = False


def store_down(exc: BaseException) -> bool:
    """The store cannot be reached, as opposed to answering slowly. A timeout or a full
    connection pool is what a burst of the key's own requests queueing on its counters looks
    like: that must never open a limit."""
    if isinstance(exc, TimeoutError | PoolTimeout | RedisTimeoutError | MaxConnectionsError):
        return False
    return isinstance(exc, RedisConnectionError) or store_unreachable(exc)


@dataclass(frozen=True, slots=True)
class Refusal:
    limit: str  # rpm, tpm or max_concurrent
    message: str
    retry_after_s: int | None


def counted(seen: Seen, kind: str) -> tuple[int | None, Window]:
    """A scope's limit and window of ``kind`` (requests or tokens)."""
    if kind == "requests":
        return seen.scope.quota.rpm, seen.requests
    return seen.scope.quota.tpm, seen.tokens


def rate_headers(seen: list[Seen], elapsed_s: float, tokens: int) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, each from the scope with the least left."""
    headers: dict[str, str] = {}
    for kind, cost in (("requests", 1), ("tokens", tokens)):
        judged = [
            (window.remaining(elapsed_s, cost, limit), limit, window)
            for s in seen
            for limit, window in [counted(s, kind)]
            if limit is not None
        ]
        if not judged:
            continue
        remaining, limit, window = min(judged, key=lambda found: found[0])
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = duration(window.reset_s(elapsed_s, cost))
    return headers


def refusal(seen: Seen, elapsed_s: float, tokens: int, key: str) -> Refusal | None:
    """Why this scope refuses the request, or None when it fits."""
    quota = seen.scope.quota
    where = f"key {key}" + (
        f" on route '{seen.scope.name.split(':route:', 1)[1]}'"
        if seen.scope.level == "route"
        else ""
    )
    if quota.max_concurrent is not None and seen.in_flight >= quota.max_concurrent:
        return Refusal(
            "max_concurrent",
            f"Concurrency limit reached for {where}: Limit {quota.max_concurrent} requests in "
            "flight. Please try again when one of them has finished.",
            1,
        )
    for limit_name, label, limit, window, cost in (
        ("rpm", "requests per min (RPM)", quota.rpm, seen.requests, 1),
        ("tpm", "tokens per min (TPM)", quota.tpm, seen.tokens, tokens),
    ):
        if limit is None or window.fits(elapsed_s, cost, limit):
            continue
        wait = window.wait_s(elapsed_s, cost, limit)
        used = math.ceil(window.used(elapsed_s))
        if wait is None:
            return Refusal(
                limit_name,
                f"Request too large for {where} on {label}: Limit {limit}, Requested {cost}. "
                "Lower max_tokens or shorten the prompt.",
                None,
            )
        return Refusal(
            limit_name,
            f"Rate limit reached for {where} on {label}: Limit {limit}, Used {used}, "
            f"Requested {cost}. Please try again in {duration(wait)}.",
            max(1, math.ceil(wait)),
        )
    return None


class Limiter:
    def __init__(
        self,
        counters: Counters,
        metrics: Metrics,
        *,
        lease_s: float,
        timeout_s: float,
        fail_open: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._counters = counters
        self._metrics = metrics
        self._lease_s = lease_s
        self._timeout_s = timeout_s
        self._fail_open = fail_open
        self._clock = clock
        self._ending: set[asyncio.Task[None]] = set()
        self._last_error_log = -math.inf
        self._local = LocalCounters()

    async def admit(self, principal: Principal, route: str, tokens: int) -> Grant | None:
        """Count the request against the key's limits: a grant, None when the key has none, or
        ``RateLimited``. A store that cannot be reached fails as configured: closed
        (``LimitsUnavailable``) or open, where this gateway's own count still holds each limit;
        a store that is only slow (a timeout: the key's own burst queueing) fails closed."""
        limits = principal.limits
        scopes = limits.scopes(principal.key_id, route) if limits is not None else []
        if not scopes:
            return None
        now_s = self._clock()
        minute, elapsed = minute_of(now_s)
        taking = Taking(scopes, minute, tokens, secrets.token_hex(16), now_s, now_s + self._lease_s)
        grant = Grant(taking)
        refused: list[Refusal] = []

        def judge(seen: list[Seen]) -> bool:
            grant.headers = rate_headers(seen, elapsed, tokens)
            found = (refusal(s, elapsed, tokens, f"lg-{principal.key_id}") for s in seen)
            refused.extend(r for r in found if r is not None)
            return not refused

        try:
            async with asyncio.timeout(self._timeout_s):
                admitted = await self._counters.take(taking, judge)
        except STORE_ERRORS as exc:
            self._store_failed("take", exc)
            if not (self._fail_open and store_down(exc)):
                raise LimitsUnavailable(
                    "The store the gateway counts rate limits in is busy or cannot be reached; "
                    "try again shortly."
                ) from exc
            # Failing open still holds each limit on this gateway's own count.
            refused.clear()
            grant.local = True
            admitted = await self._local.take(taking, judge)
        if admitted:
            return grant
        first = refused[0]
        self._metrics.rate_limited.labels(principal.key_id, first.limit).inc()
        kind = "tokens" if first.limit == "tpm" else "requests"
        raise RateLimited(
            first.message, kind=kind, retry_after_s=first.retry_after_s, headers=grant.headers
        )

    def end(self, grant: Grant | None, used_tokens: int | None) -> None:
        """Free the request's lease and settle its tokens (reserved → used), in the background.
        Without a usage count the reservation stands."""
        if grant is None:
            return
        change = used_tokens - grant.taking.tokens if used_tokens is not None else 0
        leased = any(s.quota.max_concurrent is not None for s in grant.taking.scopes)
        if not change and not leased:
            return
        if grant.local:
            task = asyncio.ensure_future(self._local.give_back(grant.taking, change))
        else:
            task = asyncio.ensure_future(self._give_back(grant.taking, change))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _give_back(self, taking: Taking, change: int) -> None:
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                await self._counters.give_back(taking, change)
        except STORE_ERRORS as exc:  # the lease lapses on its own at its expiry
            self._store_failed("give_back", exc)

    def _store_failed(self, operation: str, exc: Exception) -> None:
        self._metrics.rate_limit_store_errors.labels(operation).inc()
        now = time.monotonic()
        if now - self._last_error_log >= STORE_ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("rate limit store: %s failed: %r", operation, exc, exc_info=exc)

    async def close(self) -> None:
        """Wait for the give-backs still running, then close the store."""
        if self._ending:
            await asyncio.wait(set(self._ending), timeout=self._timeout_s * 4)
        await self._counters.close()


def build_limiter(
    settings: Settings, db: AsyncEngine, metrics: Metrics, clock: Callable[[], float] = time.time
) -> Limiter:
    """Counters on Redis when ``redis_url`` is set, else on the gateway's database."""
    counters: Counters
    if settings.redis_url:
        counters = RedisCounters(settings.redis_url, settings.limit_store_timeout_s)
    else:
        counters = DatabaseCounters(db)
    return Limiter(
        counters,
        metrics,
        lease_s=settings.limit_lease_s,
        timeout_s=settings.limit_store_timeout_s,
        fail_open=settings.limits_when_store_down is WhenStoreDown.OPEN,
        clock=clock,
    )
