"""`FairQueuePool`: connections go to waiting requests in the order they asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool

from app.core.pool import FairQueuePool


def _engine(path: Path, poolclass: type[Pool] = FairQueuePool) -> AsyncEngine:
    return create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        poolclass=poolclass,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.5,
    )


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = _engine(tmp_path / "pool.db")
    yield engine
    await engine.dispose()


async def _order_of_service(engine: AsyncEngine) -> list[str]:
    """A request waits for the only connection; its holder gives it back and at once
    asks for one again (a read connection returned, then a write transaction)."""
    order: list[str] = []
    holder = await engine.connect()

    async def waiter() -> None:
        async with engine.connect():
            order.append("waiter")

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)
    await holder.close()
    async with engine.connect():
        order.append("holder again")
    await waiting
    return order


async def test_a_waiting_request_is_served_before_a_later_one(engine: AsyncEngine) -> None:
    assert await _order_of_service(engine) == ["waiter", "holder again"]


async def test_sqlalchemys_own_pool_lets_the_later_one_in_first(tmp_path: Path) -> None:
    """What `FairQueuePool` fixes (if this starts failing, SQLAlchemy fixed it too)."""
    unfair = _engine(tmp_path / "unfair.db", AsyncAdaptedQueuePool)
    try:
        assert await _order_of_service(unfair) == ["holder again", "waiter"]
    finally:
        await unfair.dispose()


async def test_waiting_past_the_pool_timeout_is_the_pools_timeout_error(
    engine: AsyncEngine,
) -> None:
    async with engine.connect():
        with pytest.raises(exc.TimeoutError, match="QueuePool limit of size 1 overflow 0"):
            await engine.connect()


async def test_a_failed_connect_gives_its_place_back() -> None:
    async def refuse() -> Any:
        raise ConnectionRefusedError("the database is down")

    broken = create_async_engine(
        "sqlite+aiosqlite://",
        async_creator=refuse,
        poolclass=FairQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.5,
    )
    try:
        for _ in range(3):  # a place not given back would make the next one time out
            with pytest.raises(ConnectionRefusedError):
                await broken.connect()
    finally:
        await broken.dispose()
