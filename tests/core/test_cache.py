import asyncio
import logging
import uuid

import pytest

from app.core.cache import Cache, create_redis
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
