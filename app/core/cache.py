"""Redis client and a JSON cache that degrades to misses instead of failing requests.

The client is built from `REDIS_URL` with short connect and read timeouts. When Redis
is not configured, or is down, `Cache` calls behave as misses, log a warning (at most
once per `WARN_INTERVAL`), and for a short back-off skip Redis entirely, so an
outage costs neither errors nor a timeout on every request.

Entries that mirror a versioned row go through `set_json_if_newer`: a write never
replaces a newer version, so a read that fetched a row just before a write committed
cannot put the old row back after the writer stored (or deleted) the new one.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.config import Settings

logger = logging.getLogger(__name__)

WARN_INTERVAL = 30.0
BACKOFF_SECONDS = 2.0
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RedisOutage:
    """A Redis failure remembered for a short back-off, during which callers leave Redis
    alone, so an outage costs neither a timeout per request nor a warning per request."""

    def __init__(self) -> None:
        self._until = 0.0
        self._last_warning = -WARN_INTERVAL

    @property
    def ongoing(self) -> bool:
        return time.monotonic() < self._until

    def begin(self) -> bool:
        """Start (or extend) the back-off; True when a warning is due (once per interval)."""
        now = time.monotonic()
        self._until = now + BACKOFF_SECONDS
        if now - self._last_warning < WARN_INTERVAL:
            return False
        self._last_warning = now
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
    """JSON get/set/delete with TTL over an optional Redis client."""

    def __init__(self, redis: Redis | None, *, prefix: str = "cache:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._set_if_newer = redis.register_script(_SET_IF_NEWER) if redis is not None else None
        self._outage = RedisOutage()

    @property
    def available(self) -> bool:
        return self.redis is not None and not self._outage.ongoing

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._outage.begin():
            logger.warning("cache %s failed, treating as a miss: %s", operation, type(exc).__name__)

    async def get_json(self, key: str) -> Any | None:
        if self.redis is None or not self.available:
            return None
        try:
            raw = await self.redis.get(self.prefix + key)
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
        if self.redis is None or not self.available:
            return False
        try:
            payload = json.dumps(value, default=str, separators=(",", ":"))
            await self.redis.set(self.prefix + key, payload, px=max(1, int(ttl * 1000)))
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return False
        return True

    async def add_json(self, key: str, value: Any, ttl: float) -> bool | None:
        """Set `key` only if it is absent: True if set, False if present, None without Redis."""
        if self.redis is None or not self.available:
            return None
        try:
            payload = json.dumps(value, default=str, separators=(",", ":"))
            stored = await self.redis.set(
                self.prefix + key, payload, px=max(1, int(ttl * 1000)), nx=True
            )
        except REDIS_ERRORS as exc:
            self._failed("add", exc)
            return None
        return bool(stored)

    async def set_json_if_newer(
        self, key: str, value: dict[str, Any], *, ttl: float, is_write: bool = False
    ) -> bool:
        """Store `value` (an object with an integer `version`) unless the entry already
        holds that version or a newer one. `is_write=True` (the value a committed write
        produced) ignores the back-off, like `delete`: a skipped update leaves a stale entry."""
        if self._set_if_newer is None or (not is_write and not self.available):
            return False
        payload = json.dumps(value, default=str, separators=(",", ":"))
        args = (payload, int(value["version"]), max(1, int(ttl * 1000)))
        try:
            stored = await self._set_if_newer(keys=[self.prefix + key], args=args)
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return False
        return bool(stored)

    async def delete(self, *keys: str) -> bool:
        # Deletes ignore the back-off: a skipped invalidation would leave a stale entry.
        if self.redis is None or not keys:
            return False
        try:
            await self.redis.delete(*(self.prefix + key for key in keys))
        except REDIS_ERRORS as exc:
            self._failed("delete", exc)
            return False
        return True
