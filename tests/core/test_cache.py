import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable

import pytest

from app.core.cache import Cache, RedisBreaker, create_redis
from app.core.ratelimit import RateLimiter
from app.core.rates import Rate
from tests.faults import redis_server
from tests.support import CLOSED_PORT_URL, hung_server, make_settings

SQLITE = "sqlite+aiosqlite:///:memory:"


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_json_round_trip_delete_and_expiry(redis_url: str) -> None:
    redis = create_redis(make_settings(SQLITE, REDIS_URL=redis_url))
    cache = Cache(redis)
    k = key()
    try:
        assert await cache.set_json(k, {"a": [1, 2], "b": None}, ttl=30)
        assert await cache.get_json(k) == {"a": [1, 2], "b": None}
        assert await cache.delete(k)
        assert await cache.get_json(k) is None
        await cache.set_json(k, "short-lived", ttl=0.05)
        await asyncio.sleep(0.2)
        assert await cache.get_json(k) is None
    finally:
        assert redis is not None
        await redis.aclose()


async def test_without_redis_every_call_is_a_miss() -> None:
    cache = Cache(create_redis(make_settings(SQLITE, REDIS_URL="")))
    assert await cache.set_json("k", 1, ttl=10) is False
    assert await cache.get_json("k") is None
    assert await cache.delete("k") is False


async def test_redis_down_degrades_to_misses_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = create_redis(make_settings(SQLITE, REDIS_URL=f"redis://{CLOSED_PORT_URL}/0"))
    cache = Cache(redis)
    with caplog.at_level(logging.WARNING, logger="app.core.cache"):
        assert await cache.get_json("k") is None
        assert await cache.set_json("k", 1, ttl=10) is False
        assert await cache.get_json("k") is None
    warnings = [r for r in caplog.records if r.name == "app.core.cache"]
    assert len(warnings) == 1
    assert "treating as a miss" in warnings[0].getMessage()
    assert redis is not None
    await redis.aclose()


async def test_a_hung_redis_costs_at_most_the_socket_timeout() -> None:
    async with hung_server() as address:
        redis = create_redis(
            make_settings(SQLITE, REDIS_URL=f"redis://{address}/0", REDIS_SOCKET_TIMEOUT=0.2)
        )
        cache = Cache(redis)
        async with asyncio.timeout(5):
            assert await cache.get_json("k") is None
            # Within the back-off window Redis is not asked at all.
            assert await cache.get_json("k") is None
        assert redis is not None
        await redis.aclose()


async def test_an_older_version_never_replaces_a_newer_one(redis_url: str) -> None:
    redis = create_redis(make_settings(SQLITE, REDIS_URL=redis_url))
    cache = Cache(redis)
    k = key()
    try:
        assert await cache.set_json_if_newer(k, {"version": 2, "name": "new"}, ttl=30)
        assert not await cache.set_json_if_newer(k, {"version": 1, "name": "old"}, ttl=30)
        assert not await cache.set_json_if_newer(k, {"version": 2, "name": "again"}, ttl=30)
        assert await cache.get_json(k) == {"version": 2, "name": "new"}
        assert await cache.set_json_if_newer(k, {"version": 3, "deleted": True}, ttl=30)
        assert await cache.get_json(k) == {"version": 3, "deleted": True}
        await cache.set_json(k, ["not", "versioned"], ttl=30)
        assert await cache.set_json_if_newer(k, {"version": 1}, ttl=30)
        assert await cache.get_json(k) == {"version": 1}
    finally:
        assert redis is not None
        await redis.delete(cache.prefix + k)
        await redis.aclose()


async def timed(call: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def test_a_frozen_redis_costs_each_caller_one_timeout_and_trips_every_user() -> None:
    """SIGSTOP: connections are accepted but nothing answers. Callers must not queue
    behind one another's connection attempts, and once one call fails, the cache and
    the rate limiter both leave Redis alone."""
    async with redis_server() as server:
        settings = make_settings(SQLITE, REDIS_URL=server.url, REDIS_SOCKET_TIMEOUT=0.3)
        redis = create_redis(settings)
        assert redis is not None
        breaker = RedisBreaker(settings.REDIS_SOCKET_TIMEOUT, backoff=0.3)
        cache = Cache(redis, breaker=breaker)
        limiter = RateLimiter(redis, default=Rate(10, 60), breaker=breaker)
        try:
            assert await cache.set_json("k", 1, ttl=30)
            server.freeze()
            results = await asyncio.gather(*(timed(cache.get_json("k")) for _ in range(20)))
            assert [result for result, _ in results] == [None] * 20
            # Unbounded, each waited for the previous one's connection attempt: 20 x 0.3 s.
            assert max(elapsed for _, elapsed in results) < 1.0
            assert breaker.is_open
            hit, elapsed = await timed(limiter.hit("someone", Rate(10, 60)))
            assert hit is None
            assert elapsed < 0.1  # skipped at once: the limiter shares the breaker

            await asyncio.sleep(breaker.backoff + 0.05)  # half-open: one caller probes
            probes = await asyncio.gather(*(timed(cache.get_json("k")) for _ in range(10)))
            waited = sorted(elapsed for _, elapsed in probes)
            assert waited[-1] >= 0.25  # the probe waited for its timeout
            assert waited[-2] < 0.1  # everyone else was told at once
            assert breaker.is_open

            server.thaw()
            await asyncio.sleep(breaker.backoff + 0.05)
            assert await cache.get_json("k") == 1  # a successful probe closes the breaker
            assert not breaker.is_open
        finally:
            server.thaw()
            await redis.aclose()
