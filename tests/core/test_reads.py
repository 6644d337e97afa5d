"""`DirectSelect`: on a PostgreSQL read connection a statement runs on the driver itself
and returns exactly the rows SQLAlchemy would; everywhere else SQLAlchemy runs it; a
failure reaches the app as SQLAlchemy reports it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.db import create_engine, read_engine
from app.core.reads import DirectSelect
from tests.support import make_settings
from tests.tables import Rank, Ranked, scratch_tables

RANKED = Ranked.__table__  # type: ignore[attr-defined]
BY_SCORE = DirectSelect(
    select(RANKED)
    .where(RANKED.c.score >= bindparam("min_score"))
    .order_by(RANKED.c.score)
    .limit(bindparam("page_limit"))
)

SLEEP = DirectSelect(select(func.pg_sleep(bindparam("seconds"))))


async def after_first_run(
    query: DirectSelect, connection: AsyncConnection, params: dict[str, Any]
) -> int:
    """Run `query` once (SQLAlchemy's run, which teaches it the result conversions),
    so the next run goes to the driver; the connection's server process id."""
    await query.all(connection, params)
    return int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())


@contextmanager
def statements_through_sqlalchemy(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements SQLAlchemy executes on `engine` while the block runs (counted
    without an engine event: listening to the engine sends everything through it)."""
    seen: list[str] = []
    execute = Connection.execute

    def counting(self: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if self.engine is engine.sync_engine or self.engine.pool is engine.sync_engine.pool:
            seen.append(str(statement))
        return execute(self, statement, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Connection, "execute", counting)
        yield seen


async def _seed(engine: AsyncEngine) -> None:
    rows = [
        {
            "id": uuid.uuid4(),
            "score": score,
            "label": f"row {score}",
            "rank": Rank.HIGH if score % 2 else Rank.LOW,
            "ref": uuid.uuid4(),
            "seen_at": datetime(2026, 1, score + 1, 12, 30, 15, 250_000, tzinfo=UTC),
            "flag": bool(score % 2),
            "day": date(2026, 2, score + 1),
            "amount": Decimal(f"{score}.25"),
        }
        for score in range(5)
    ]
    async with engine.begin() as connection:
        await connection.execute(RANKED.insert(), rows)


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(postgres_url, DB_COMMAND_TIMEOUT=0.5))
    async with scratch_tables(engine):
        await _seed(engine)
        yield engine
    await engine.dispose()


@pytest.fixture
async def sqlite_engine(db_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    async with scratch_tables(db_engine):
        await _seed(db_engine)
        yield db_engine


async def test_on_a_postgres_read_connection_rows_match_sqlalchemy_without_it(
    pg_engine: AsyncEngine,
) -> None:
    params = {"min_score": 1, "page_limit": 3}
    query = DirectSelect(BY_SCORE.statement)
    async with read_engine(pg_engine).connect() as connection:
        with statements_through_sqlalchemy(pg_engine) as seen:
            learned = await query.all(connection, params)  # the first run: SQLAlchemy's
        assert len(seen) == 1
        with statements_through_sqlalchemy(pg_engine) as seen:
            rows = await query.all(connection, params)
            first = await query.first(connection, {"min_score": 9, "page_limit": 3})
    assert seen == []
    assert rows == learned
    assert [row["score"] for row in rows] == [1, 2, 3]
    assert rows[0]["rank"] is Rank.HIGH  # converted by the column type, as SQLAlchemy does
    assert rows[0]["seen_at"] == datetime(2026, 1, 2, 12, 30, 15, 250_000, tzinfo=UTC)
    assert rows[0]["amount"] == Decimal("1.25")
    assert first is None


async def test_transactions_and_sqlite_go_through_sqlalchemy(
    pg_engine: AsyncEngine, sqlite_engine: AsyncEngine
) -> None:
    params = {"min_score": 3, "page_limit": 10}
    for engine, begin in ((pg_engine, True), (sqlite_engine, False), (sqlite_engine, True)):
        opened = engine.begin() if begin else read_engine(engine).connect()
        async with opened as connection:
            with statements_through_sqlalchemy(engine) as seen:
                rows = await BY_SCORE.all(connection, params)
        assert len(seen) == 1
        assert [(row["score"], row["rank"]) for row in rows] == [(3, Rank.HIGH), (4, Rank.LOW)]


async def test_a_missing_parameter_is_sqlalchemys_error(pg_engine: AsyncEngine) -> None:
    async with read_engine(pg_engine).connect() as connection:
        with pytest.raises(StatementError, match="page_limit"):
            await BY_SCORE.all(connection, {"min_score": 1})


async def test_a_connection_that_died_is_invalidated_and_reported_as_sqlalchemy_does(
    pg_engine: AsyncEngine,
) -> None:
    reader = read_engine(pg_engine)
    query = DirectSelect(BY_SCORE.statement)
    async with reader.connect() as connection:
        pid = await after_first_run(query, connection, {"min_score": 0, "page_limit": 1})
        async with pg_engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(0.1)
        with pytest.raises(DBAPIError) as failure:
            await query.all(connection, {"min_score": 0, "page_limit": 1})
        assert failure.value.connection_invalidated
    async with reader.connect() as connection:  # the pool replaced it
        assert len(await BY_SCORE.all(connection, {"min_score": 0, "page_limit": 10})) == 5


async def test_a_statement_over_the_command_timeout_raises_timeout_error(
    pg_engine: AsyncEngine,
) -> None:
    sleep = DirectSelect(SLEEP.statement)
    async with read_engine(pg_engine).connect() as connection:
        await after_first_run(sleep, connection, {"seconds": 0})
        with pytest.raises(TimeoutError):
            await sleep.all(connection, {"seconds": 5})


async def test_a_cancelled_statement_leaves_its_connection_out_of_the_pool(
    pg_engine: AsyncEngine,
) -> None:
    reader = read_engine(pg_engine)
    sleep = DirectSelect(SLEEP.statement)
    async with reader.connect() as connection:
        pid = await after_first_run(sleep, connection, {"seconds": 0})
        task = asyncio.create_task(sleep.all(connection, {"seconds": 0.4}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert connection.sync_connection is not None
        assert connection.sync_connection.invalidated
    async with reader.connect() as connection:
        fresh = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert fresh != pid
        assert len(await BY_SCORE.all(connection, {"min_score": 0, "page_limit": 10})) == 5


async def test_a_statement_the_server_cancels_is_reported_once_not_run_again(
    pg_engine: AsyncEngine,
) -> None:
    sleep = DirectSelect(SLEEP.statement)
    async with read_engine(pg_engine).connect() as connection:
        pid = await after_first_run(sleep, connection, {"seconds": 0})

        async def cancel_soon() -> None:
            await asyncio.sleep(0.1)
            async with pg_engine.connect() as other:
                await other.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})

        canceller = asyncio.create_task(cancel_soon())
        with statements_through_sqlalchemy(pg_engine) as seen, pytest.raises(DBAPIError) as failure:
            await sleep.all(connection, {"seconds": 0.4})
        await canceller
        assert getattr(failure.value.orig, "sqlstate", None) == "57014"  # query_canceled
        assert not failure.value.connection_invalidated
        assert not [statement for statement in seen if "pg_sleep" in statement]  # sent once
        assert (await sleep.all(connection, {"seconds": 0})) == [{"pg_sleep_1": None}]


async def test_with_engine_events_on_every_statement_goes_through_sqlalchemy(
    pg_engine: AsyncEngine,
) -> None:
    traced: list[str] = []

    def trace(*args: Any) -> None:
        traced.append(args[2])

    query = DirectSelect(BY_SCORE.statement)
    event.listen(pg_engine.sync_engine, "before_cursor_execute", trace)
    try:
        async with read_engine(pg_engine).connect() as connection:
            for _ in range(3):
                await query.all(connection, {"min_score": 0, "page_limit": 2})
    finally:
        event.remove(pg_engine.sync_engine, "before_cursor_execute", trace)
    assert len(traced) == 3
