"""The counters on Redis (``LORAGATE_REDIS_URL``): one script adds, one takes back.

All of a key's counters share a hash tag, so both scripts touch one Redis Cluster slot.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import BlockingConnectionPool, Redis

from service.limits.quota import Scope, Window
from service.limits.stores import Seen, Taking

MAX_CONNECTIONS = 32  # per gateway; a script runs in well under a millisecond

# KEYS: per scope, this minute's hash, the previous minute's hash, the lease set.
# ARGV: tokens, lease, now, expires_at, then per scope 1 if it has a concurrency limit.
TAKE = """
local tokens, lease = tonumber(ARGV[1]), ARGV[2]
local now, expires = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local current, previous, leases = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local r = redis.call('HINCRBY', current, 'r', 1)
  local t = redis.call('HINCRBY', current, 't', tokens)
  redis.call('EXPIRE', current, 180)
  local before = redis.call('HMGET', previous, 'r', 't')
  local in_flight = 0
  if ARGV[5 + i] == '1' then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    in_flight = redis.call('ZCARD', leases)
    redis.call('ZADD', leases, expires, lease)
    redis.call('EXPIRE', leases, math.ceil(expires - now) + 60)
  end
  for _, v in ipairs({r, t, tonumber(before[1]) or 0, tonumber(before[2]) or 0, in_flight}) do
    table.insert(out, v)
  end
end
return out
"""

# KEYS: per scope, the minute's hash and the lease set. ARGV: requests, tokens, lease.
GIVE_BACK = """
for i = 0, #KEYS / 2 - 1 do
  local current, leases = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if redis.call('EXISTS', current) == 1 then
    redis.call('HINCRBY', current, 'r', tonumber(ARGV[1]))
    redis.call('HINCRBY', current, 't', tonumber(ARGV[2]))
  end
  redis.call('ZREM', leases, ARGV[3])
end
return 0
"""


def _names(scope: Scope, minute: int) -> tuple[str, str, str]:
    tag = scope.name.split(":route:", 1)[0]
    base = f"loragate:limits:{{{tag}}}:{scope.name}"
    return f"{base}:{minute}", f"{base}:{minute - 1}", f"{base}:leases"


class RedisCounters:
    def __init__(self, url: str, timeout_s: float) -> None:
        # A burst waits for one of a bounded set of connections (at most the limiter's timeout)
        # instead of opening one per request or failing as "too many connections".
        pool = BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        )  # fmt: skip
        self._redis = Redis(connection_pool=pool)
        self._take = self._redis.register_script(TAKE)
        self._give_back = self._redis.register_script(GIVE_BACK)

    async def take(self, taking: Taking, judge: Callable[[list[Seen]], bool]) -> bool:
        keys: list[str] = []
        for scope in taking.scopes:
            keys.extend(_names(scope, taking.minute))
        flags = ["1" if s.quota.max_concurrent is not None else "0" for s in taking.scopes]
        args: list[str | int | float] = [
            taking.tokens,
            taking.lease,
            taking.now_s,
            taking.expires_at,
            *flags,
        ]
        counts = [int(v) for v in await self._take(keys=keys, args=args)]
        seen = []
        for i, scope in enumerate(taking.scopes):
            r, t, pr, pt, in_flight = counts[5 * i : 5 * i + 5]
            seen.append(Seen(scope, Window(pr, r - 1), Window(pt, t - taking.tokens), in_flight))
        if judge(seen):
            return True
        await self._undo(taking, -1, -taking.tokens)
        return False

    async def give_back(self, taking: Taking, token_change: int) -> None:
        await self._undo(taking, 0, token_change)

    async def _undo(self, taking: Taking, requests: int, tokens: int) -> None:
        keys: list[str] = []
        for scope in taking.scopes:
            current, _, leases = _names(scope, taking.minute)
            keys += [current, leases]
        await self._give_back(keys=keys, args=[requests, tokens, taking.lease])

    async def close(self) -> None:
        await self._redis.aclose()
