"""The shared counters on the real stores: SQLite, PostgreSQL and Redis.

Many requests of one key arrive at once; the counts decide who gets in. On the database a
limit is exact (the scope's row serialises them); on Redis it is never exceeded.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.db.session import create_engine
from service.limits.quota import Quota, Scope
from service.limits.redis_counters import RedisCounters
from service.limits.stores import Counters, DatabaseCounters, Seen, Taking
from tests.conftest import fresh_database

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = 1_000_000 * 60.0 + 30.0  # half way through a minute


def redis_is_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def counters(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counters]:
    if request.param == "redis":
        if not redis_is_up():
            pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/test.sh starts it)")
        store = RedisCounters(REDIS_URL, 5.0)
        yield store
        await store.close()
        return
    async with fresh_database(request.param, tmp_path) as url:
        db = create_engine(url)
        yield DatabaseCounters(db)
        await db.dispose()


def taking(scope: Scope, tokens: int = 0, now_s: float = NOW) -> Taking:
    minute = int(now_s // 60)
    return Taking([scope], minute, tokens, secrets.token_hex(8), now_s, now_s + 600)


def unique_scope(quota: Quota) -> Scope:
    return Scope(f"key:{secrets.token_hex(6)}", "key", quota)


def under(limit: int, pick: Callable[[Seen], int]) -> Callable[[list[Seen]], bool]:
    return lambda seen: all(pick(s) < limit for s in seen)


async def test_concurrent_requests_never_pass_the_requests_limit(counters: Counters) -> None:
    scope = unique_scope(Quota(rpm=10))
    judge = under(10, lambda s: s.requests.current)
    results = await asyncio.gather(*(counters.take(taking(scope), judge) for _ in range(40)))
    admitted = sum(results)
    assert 1 <= admitted <= 10
    if isinstance(counters, DatabaseCounters):
        assert admitted == 10  # exact: each request is judged after the one before
    # Refused requests were taken back: one more is judged on the 10 (or fewer) admitted.
    seen: list[Seen] = []
    await counters.take(taking(scope), lambda s: bool(seen.extend(s)))
    assert seen[0].requests.current == admitted


async def test_concurrency_slots_are_held_until_given_back_and_lapse_if_never(
    counters: Counters,
) -> None:
    scope = unique_scope(Quota(max_concurrent=3))
    judge = under(3, lambda s: s.in_flight)
    takings = [taking(scope) for _ in range(12)]
    results = await asyncio.gather(*(counters.take(t, judge) for t in takings))
    held = [t for t, ok in zip(takings, results, strict=True) if ok]
    assert 1 <= len(held) <= 3
    assert not await counters.take(taking(scope), under(len(held), lambda s: s.in_flight))
    await counters.give_back(held[0], 0)
    assert await counters.take(taking(scope), under(len(held), lambda s: s.in_flight))
    # A gateway that died never gives its slots back: they lapse at their expiry.
    later = taking(scope, now_s=NOW + 601)
    seen: list[Seen] = []
    await counters.take(later, lambda s: bool(seen.extend(s)))
    assert seen[0].in_flight == 0


async def test_tokens_are_reserved_then_settled_and_the_last_minute_counts(
    counters: Counters,
) -> None:
    scope = unique_scope(Quota(tpm=1000))
    first = taking(scope, tokens=300)
    assert await counters.take(first, lambda s: True)
    await counters.give_back(first, -200)  # it used 100 of the 300 it reserved
    seen: list[Seen] = []
    await counters.take(taking(scope, tokens=50), lambda s: bool(seen.extend(s)))
    assert (seen[0].tokens.current, seen[0].requests.current) == (100, 1)
    # A minute later the same counts are the previous minute's.
    seen.clear()
    await counters.take(taking(scope, tokens=5, now_s=NOW + 60), lambda s: bool(seen.extend(s)))
    assert (seen[0].tokens.previous, seen[0].tokens.current) == (100, 0)
    assert seen[0].requests.previous == 1


async def test_a_key_and_its_route_are_counted_together(counters: Counters) -> None:
    key = unique_scope(Quota(rpm=5))
    route = Scope(f"{key.name}:route:triage", "route", Quota(rpm=2))
    both = [key, route]

    def judge(seen: list[Seen]) -> bool:
        return all(s.requests.current < (s.scope.quota.rpm or 0) for s in seen)

    def on_route() -> Taking:
        return Taking(both, int(NOW // 60), 0, secrets.token_hex(8), NOW, NOW + 600)

    assert [await counters.take(on_route(), judge) for _ in range(3)] == [True, True, False]
    # The route's refusal was taken back from the key's count too.
    assert [await counters.take(taking(key), judge) for _ in range(4)] == [
        True, True, True, False,
    ]  # fmt: skip


@pytest.mark.redis
async def test_redis_counts_of_one_key_share_a_cluster_slot() -> None:
    if not redis_is_up():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (scripts/test.sh starts it)")
    store = RedisCounters(REDIS_URL, 5.0)
    key = unique_scope(Quota(max_concurrent=1))
    route = Scope(f"{key.name}:route:triage", "route", Quota(max_concurrent=1))
    one = Taking([key, route], int(NOW // 60), 7, "lease-1", NOW, NOW + 600)
    assert await store.take(one, lambda s: True)
    client = Redis.from_url(REDIS_URL)
    try:
        names = [n.decode() for n in await client.keys(f"*{key.name}*")]
        tags = {n.split("{", 1)[1].split("}", 1)[0] for n in names}
        assert tags == {key.name} and len(names) == 4  # two minute hashes, two lease sets
    finally:
        await client.aclose()
        await store.close()
