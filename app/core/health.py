"""Readiness checks: the database, Redis and (when it is a remote service) file
storage, probed concurrently and bounded in time.

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


class _Check:
    """One component's check, bounded in time however long its clean-up takes.

    A check that overruns is cancelled and left to unwind in the background (closing a
    connection to a partitioned server can take as long again), and the next probes
    report the component down at once while it does, so dead sockets never pile up.
    """

    def __init__(self, check: Callable[[], Awaitable[object]]) -> None:
        self.check = check
        self._abandoned: asyncio.Task[object] | None = None

    async def run(self, timeout: float) -> ComponentReport:
        if self._abandoned is not None:
            return ComponentReport("down", error="the previous check has not finished")
        started = time.perf_counter()
        task: asyncio.Task[object] = asyncio.ensure_future(self.check())
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            self._abandon(task)
            return ComponentReport("down", error=f"timed out after {timeout:g}s")
        failure = task.exception()
        if failure is not None:  # any failure means "down"; only its class name is shown
            return ComponentReport("down", error=type(failure).__name__)
        return ComponentReport("up", latency_ms=round((time.perf_counter() - started) * 1000, 2))

    def _abandon(self, task: asyncio.Task[object]) -> None:
        self._abandoned = task
        task.cancel()
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[object]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        self._abandoned = None


class ReadinessProbe:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis | None,
        *,
        timeout: float,
        requires_redis: bool,
        storage: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self._database = _Check(self._ping_database)
        self._redis = _Check(redis.ping) if redis is not None else None
        # Storage down fails only the routes that move files: "degraded", like Redis.
        self._storage = _Check(storage) if storage is not None else None
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
        if self._redis is None:
            redis_check = asyncio.sleep(0, ComponentReport("disabled"))
        else:
            redis_check = self._redis.run(self.timeout)
        checks = [self._database.run(self.timeout), redis_check]
        if self._storage is not None:
            checks.append(self._storage.run(self.timeout))
        database, redis, *storage = await asyncio.gather(*checks)
        components = {"database": database, "redis": redis}
        if storage:
            components["storage"] = storage[0]
        if database.status != "up" or (self.requires_redis and redis.status != "up"):
            status: OverallStatus = "unavailable"
        elif any(report.status == "down" for report in components.values()):
            status = "degraded"
        else:
            status = "ok"
        return ReadinessReport(status, components)

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
