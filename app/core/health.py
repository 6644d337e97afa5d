"""Readiness checks: the database and Redis, probed concurrently and bounded in time.

Orchestrators may probe every few seconds from many nodes, so a check's result is
reused for `CACHE_SECONDS` and probes that arrive while a check runs wait for that
same check instead of starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ComponentStatus = Literal["up", "down", "disabled"]
OverallStatus = Literal["ok", "degraded", "unavailable"]
CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ComponentReport:
    status: ComponentStatus
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    status: OverallStatus
    components: dict[str, ComponentReport] = field(default_factory=dict)


async def _timed(check: Callable[[], Awaitable[object]], timeout: float) -> ComponentReport:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        return ComponentReport("down", error=f"timed out after {timeout:g}s")
    except Exception as exc:  # any failure means "down"; only the class name is exposed
        return ComponentReport("down", error=type(exc).__name__)
    return ComponentReport("up", latency_ms=round((time.perf_counter() - started) * 1000, 2))


class ReadinessProbe:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis | None,
        *,
        timeout: float,
        requires_redis: bool,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.timeout = timeout
        self.requires_redis = requires_redis
        self._report: ReadinessReport | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[ReadinessReport] | None = None

    async def _ping_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _run(self) -> ReadinessReport:
        redis_check: Awaitable[ComponentReport]
        if self.redis is None:
            redis_check = asyncio.sleep(0, ComponentReport("disabled"))
        else:
            redis_check = _timed(self.redis.ping, self.timeout)
        database, redis = await asyncio.gather(
            _timed(self._ping_database, self.timeout), redis_check
        )
        if database.status != "up" or (self.requires_redis and redis.status != "up"):
            status: OverallStatus = "unavailable"
        elif redis.status == "down":
            status = "degraded"
        else:
            status = "ok"
        return ReadinessReport(status, {"database": database, "redis": redis})

    async def check(self) -> ReadinessReport:
        if self._report is not None and time.monotonic() - self._checked_at < CACHE_SECONDS:
            return self._report
        if self._running is None:
            self._running = asyncio.create_task(self._run())
            self._running.add_done_callback(self._store)
        return await asyncio.shield(self._running)

    def _store(self, task: asyncio.Task[ReadinessReport]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._report = task.result()
            self._checked_at = time.monotonic()
