"""Redis client, the circuit breaker every Redis user shares, and a JSON cache that
degrades to misses instead of failing requests.

The client is built from `REDIS_URL` with short connect and read timeouts. Each
process has one `RedisBreaker` (the lifespan builds it and hands it to the cache, the
rate limiter and the job queue): when a call fails or times out, all of them skip
Redis for a short back-off, so an outage, or a Redis that accepts connections but
never answers, costs neither errors nor a timeout on every request. When Redis is
not configured, or is down, `Cache` calls behave as misses and log a warning at
most once per `WARN_INTERVAL`.

Entries that mirror a versioned row go through `set_json_if_newer`: a write never
replaces a newer version, so a read that fetched a row just before a write committed
cannot put the old row back after the writer stored (or deleted) the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core import metrics
from app.core.config import Settings

logger = logging.getLogger(__name__)

WARN_INTERVAL = 30.0
BACKOFF_SECONDS = 2.0
DEFAULT_TIMEOUT = 1.0
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
T = TypeVar("T")


class RedisSkippedError(RedisError):
    """Raised instead of calling Redis while the breaker is open."""


class RedisBreaker:
    """A circuit breaker shared by every Redis user of a process (cache, rate limiter,
    job queue).

    Each call is bounded by `timeout` as a whole, waiting for a pooled connection
    included: a frozen Redis makes callers queue behind one connection attempt, so a
    per-socket timeout alone lets waits add up. The first failure opens the breaker for
    everyone: for `backoff` seconds calls fail at once with `RedisSkippedError`. Then one
    caller probes Redis while the others keep skipping it; its success closes the
    breaker, its failure opens it again. An outage therefore costs one timeout per
    back-off period, not one per request.
    """

    def __init__(self, timeout: float, *, backoff: float = BACKOFF_SECONDS) -> None:
        self.timeout = timeout
        self.backoff = backoff
        self._open_until = 0.0  # 0: closed; otherwise open, or half-open once past
        self._probing = False
        self._warned_at: dict[str, float] = {}

    @classmethod
    def for_client(cls, redis: Redis | None) -> RedisBreaker:
        """A breaker whose bound is the client's own socket timeout."""
        kwargs = redis.connection_pool.connection_kwargs if redis is not None else {}
        return cls(float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT))

    @property
    def is_open(self) -> bool:
        """True while calls are skipped (open, or half-open with a probe under way)."""
        return self._probing or time.monotonic() < self._open_until

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation under the breaker; raises `RedisSkippedError` when open, or
        the operation's error (a `TimeoutError` past `timeout`), which opens it."""
        if self._open_until and (self._probing or time.monotonic() < self._open_until):
            raise RedisSkippedError("Redis is skipped after a recent failure")
        probing = self._probing = self._open_until != 0.0
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except REDIS_ERRORS:
            self._open_until = time.monotonic() + self.backoff
            metrics.REDIS_ERRORS.inc()
            metrics.REDIS_BACKOFF.set(1)
            raise
        finally:
            if probing:
                self._probing = False
        if self._open_until:
            self._open_until = 0.0
            metrics.REDIS_BACKOFF.set(0)
        return result

    def warning_due(self, who: str) -> bool:
        """True at most once per `WARN_INTERVAL` for each `who`, so an outage is logged
        without a line per request."""
        now = time.monotonic()
        if now - self._warned_at.get(who, -WARN_INTERVAL) < WARN_INTERVAL:
            return False
        self._warned_at[who] = now
        return True


# KEYS[1] entry; ARGV: JSON value, its version, TTL (ms). Stores unless the entry holds a
# JSON object whose `version` is at least as new; returns 1 when stored.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and tonumber(stored['version']) and
      tonumber(stored['version']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


def create_redis(settings: Settings) -> Redis | None:
    """A Redis client (no connection is made until first use), or None when not configured."""
    if not settings.REDIS_URL:
        return None
    client: Redis = Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        decode_responses=False,
    )
    return client


class Cache:
    """JSON get/set/delete with TTL over an optional Redis client.

    Every call goes through the process's `RedisBreaker`: while Redis is failing,
    reads are misses and writes are skipped at once. A write skipped that way (an
    outage that ended with Redis's data intact, say) leaves an entry that may be stale
    until its TTL runs out.
    """

    def __init__(
        self, redis: Redis | None, *, breaker: RedisBreaker | None = None, prefix: str = "cache:"
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.breaker = breaker or RedisBreaker.for_client(redis)
        self._set_if_newer = redis.register_script(_SET_IF_NEWER) if redis is not None else None

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.breaker.warning_due("cache"):
            logger.warning("cache %s failed, treating as a miss: %s", operation, type(exc).__name__)

    async def get_json(self, key: str) -> Any | None:
        redis = self.redis
        if redis is None:
            return None
        try:
            raw = await self.breaker.call(lambda: redis.get(self.prefix + key))
        except REDIS_ERRORS as exc:
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def set_json(self, key: str, value: Any, ttl: float) -> bool:
        redis = self.redis
        if redis is None:
            return False
        payload = json.dumps(value, default=str, separators=(",", ":"))
        try:
            await self.breaker.call(
                lambda: redis.set(self.prefix + key, payload, px=max(1, int(ttl * 1000)))
            )
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return False
        return True

    async def set_json_if_newer(self, key: str, value: dict[str, Any], *, ttl: float) -> bool:
        """Store `value` (an object with an integer `version`) unless the entry already
        holds that version or a newer one."""
        script = self._set_if_newer
        if script is None:
            return False
        payload = json.dumps(value, default=str, separators=(",", ":"))
        args = (payload, int(value["version"]), max(1, int(ttl * 1000)))
        try:
            stored = await self.breaker.call(lambda: script(keys=[self.prefix + key], args=args))
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return False
        return bool(stored)

    async def delete(self, *keys: str) -> bool:
        redis = self.redis
        if redis is None or not keys:
            return False
        try:
            await self.breaker.call(lambda: redis.delete(*(self.prefix + key for key in keys)))
        except REDIS_ERRORS as exc:
            self._failed("delete", exc)
            return False
        return True
