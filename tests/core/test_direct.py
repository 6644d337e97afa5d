"""`DirectStatement`: on a PostgreSQL read connection a statement runs on the driver itself
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
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.db import create_engine, read_engine
from app.core.direct import DirectStatement
from tests.support import make_settings
from tests.tables import Rank, Ranked, scratch_tables

RANKED = Ranked.__table__  # type: ignore[attr-defined]
BY_SCORE = DirectStatement(
    select(RANKED)
    .where(RANKED.c.score >= bindparam("min_score"))
    .order_by(RANKED.c.score)
    .limit(bindparam("page_limit"))
)

SLEEP = DirectStatement(select(func.pg_sleep(bindparam("seconds"))))


async def after_first_run(
    query: DirectStatement[Any], connection: AsyncConnection, params: dict[str, Any]
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
    query = DirectStatement(BY_SCORE.statement)
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


async def test_sqlite_and_connections_outside_a_transaction_go_through_sqlalchemy(
    pg_engine: AsyncEngine, sqlite_engine: AsyncEngine
) -> None:
    params = {"min_score": 3, "page_limit": 10}
    async with read_engine(pg_engine).connect() as connection:
        await BY_SCORE.all(connection, params)  # learned: the next runs could be direct
    cases = [(pg_engine, "connect")]
    if sqlite_engine.dialect.name == "sqlite":  # the suite's database (PostgreSQL in one run)
        cases += [(sqlite_engine, "read"), (sqlite_engine, "begin")]
    for engine, how in cases:
        # "connect": no transaction yet, SQLAlchemy begins one itself.
        opened = engine.begin() if how == "begin" else engine.connect()
        if how == "read":
            opened = read_engine(engine).connect()
        async with opened as connection:
            with statements_through_sqlalchemy(engine) as seen:
                rows = await BY_SCORE.all(connection, params)
        assert len(seen) == 1, how
        assert [(row["score"], row["rank"]) for row in rows] == [(3, Rank.HIGH), (4, Rank.LOW)]


def new_row(score: int) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "score": score,
        "label": f"new {score}",
        "rank": Rank.HIGH,
        "ref": uuid.uuid4(),
        "seen_at": datetime(2026, 3, 1, 8, 0, 0, 500, tzinfo=UTC),
        "flag": True,
        "day": date(2026, 3, 1),
        "amount": Decimal("7.50"),
    }


INSERT = RANKED.insert().returning(RANKED)
BY_ID = DirectStatement(select(RANKED.c.score).where(RANKED.c.id == bindparam("row_id")))


async def stored(engine: AsyncEngine, row_id: uuid.UUID) -> bool:
    async with read_engine(engine).connect() as connection:
        return await BY_ID.first(connection, {"row_id": row_id}) is not None


async def test_in_a_transaction_statements_run_on_the_driver_and_commit_or_roll_back_with_it(
    pg_engine: AsyncEngine,
) -> None:
    insert = DirectStatement(INSERT, columns=list(new_row(0)))
    async with pg_engine.begin() as connection:
        learned = await insert.all(connection, new_row(10))  # SQLAlchemy's runs
        await BY_SCORE.all(connection, {"min_score": 0, "page_limit": 1})
    committed, rolled_back = new_row(11), new_row(12)
    with statements_through_sqlalchemy(pg_engine) as seen:
        async with pg_engine.begin() as connection:
            # The transaction's first statement: the driver's BEGIN is sent before it.
            (row,) = await insert.all(connection, committed)
            assert await BY_SCORE.all(connection, {"min_score": 11, "page_limit": 5}) == [row]

        async def insert_then_fail() -> None:
            async with pg_engine.begin() as connection:
                await insert.all(connection, rolled_back)
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await insert_then_fail()
    assert seen == []
    assert row == committed  # converted back, as stored
    assert learned[0]["score"] == 10
    assert await stored(pg_engine, committed["id"])
    assert not await stored(pg_engine, rolled_back["id"])


async def test_an_insert_of_other_columns_than_declared_goes_through_sqlalchemy(
    pg_engine: AsyncEngine,
) -> None:
    row = new_row(20)
    insert = DirectStatement(INSERT, columns=list(row))
    async with pg_engine.begin() as connection:
        await insert.all(connection, new_row(21))
        with statements_through_sqlalchemy(pg_engine) as seen:
            del row["label"]
            with pytest.raises(DBAPIError, match="label"):  # NOT NULL: not bound as None
                await insert.all(connection, row)
        assert len(seen) == 1


async def test_a_server_error_in_a_transaction_is_the_error_sqlalchemy_raises(
    pg_engine: AsyncEngine,
) -> None:
    insert = DirectStatement(INSERT, columns=list(new_row(0)))
    duplicate = new_row(30)
    async with pg_engine.begin() as connection:
        await insert.all(connection, duplicate)

    async def insert_twice() -> None:
        async with pg_engine.begin() as connection:
            await insert.all(connection, new_row(31))
            await insert.all(connection, duplicate)

    with statements_through_sqlalchemy(pg_engine) as seen, pytest.raises(IntegrityError) as failure:
        await insert_twice()
    assert seen == []
    assert getattr(failure.value.orig, "sqlstate", None) == "23505"
    assert not failure.value.connection_invalidated
    async with pg_engine.connect() as connection:  # rolled back; the connection still works
        count = select(func.count()).select_from(RANKED).where(RANKED.c.score == 31)
        assert (await connection.execute(count)).scalar_one() == 0


async def test_a_missing_parameter_is_sqlalchemys_error(pg_engine: AsyncEngine) -> None:
    async with read_engine(pg_engine).connect() as connection:
        with pytest.raises(StatementError, match="page_limit"):
            await BY_SCORE.all(connection, {"min_score": 1})


async def test_a_connection_that_died_is_invalidated_and_reported_as_sqlalchemy_does(
    pg_engine: AsyncEngine,
) -> None:
    reader = read_engine(pg_engine)
    query = DirectStatement(BY_SCORE.statement)
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
    sleep = DirectStatement(SLEEP.statement)
    async with read_engine(pg_engine).connect() as connection:
        await after_first_run(sleep, connection, {"seconds": 0})
        with pytest.raises(TimeoutError):
            await sleep.all(connection, {"seconds": 5})


async def test_a_cancelled_statement_leaves_its_connection_out_of_the_pool(
    pg_engine: AsyncEngine,
) -> None:
    reader = read_engine(pg_engine)
    sleep = DirectStatement(SLEEP.statement)
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
    sleep = DirectStatement(SLEEP.statement)
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

    query = DirectStatement(BY_SCORE.statement)
    event.listen(pg_engine.sync_engine, "before_cursor_execute", trace)
    try:
        async with read_engine(pg_engine).connect() as connection:
            for _ in range(3):
                await query.all(connection, {"min_score": 0, "page_limit": 2})
    finally:
        event.remove(pg_engine.sync_engine, "before_cursor_execute", trace)
    assert len(traced) == 3


async def test_a_statement_cancelled_in_a_transaction_invalidates_and_rolls_back(
    pg_engine: AsyncEngine,
) -> None:
    sleep = DirectStatement(SLEEP.statement)
    insert = DirectStatement(INSERT, columns=list(new_row(0)))
    async with pg_engine.begin() as connection:
        await after_first_run(sleep, connection, {"seconds": 0})
        await insert.all(connection, new_row(40))
    row = new_row(41)
    invalidated: list[bool] = []

    async def cancelled_mid_transaction() -> None:
        async with pg_engine.begin() as connection:
            await insert.all(connection, row)
            task = asyncio.create_task(sleep.all(connection, {"seconds": 0.4}))
            await asyncio.sleep(0.1)
            task.cancel()
            try:
                await task
            finally:
                invalidated.append(bool(connection.sync_connection.invalidated))  # type: ignore[union-attr]

    with pytest.raises(asyncio.CancelledError):
        await cancelled_mid_transaction()
    assert invalidated == [True]
    assert not await stored(pg_engine, row["id"])
    async with pg_engine.begin() as connection:  # the pool serves a working connection
        await insert.all(connection, row)
    assert await stored(pg_engine, row["id"])
