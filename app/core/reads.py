"""Reads that skip SQLAlchemy's execution layer where the driver can run them itself.

`DirectSelect(statement)` wraps a Core SELECT built once, with bound parameters. On a
read connection over asyncpg (`ReadConnectionDep`, `read_engine`: PostgreSQL in
AUTOCOMMIT) it compiles the statement once, then sends it through the driver
connection that SQLAlchemy's pool checked out: one round trip, the rows as dicts,
without the execution context and result objects SQLAlchemy builds for every
statement (about 0.1 ms of CPU each, a fifth of an authenticated read). Anywhere else
(SQLite, the connection of a write transaction, a statement SQLAlchemy must expand per
call) it runs through SQLAlchemy, with the same rows.

Values go through the same type conversions as with SQLAlchemy (the column types'
bind and result processors, for this dialect, learned from SQLAlchemy's own first run
of the statement). Errors reach the app as SQLAlchemy reports them: a statement whose
connection died is handed to SQLAlchemy, which reports it and takes the connection out
of the pool; a server error is raised once as a `DBAPIError` carrying the server's
SQLSTATE; a timed-out statement raises `TimeoutError` (a 503); a cancelled one
invalidates its connection, whose state is then unknown. With SQL echo or engine
events on (`DB_ECHO`, tracing), every statement goes through SQLAlchemy, so each one
is still logged and traced.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

Processor = Callable[[Any], Any]


@dataclass(slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the bound parameters, in the order the driver takes them
    bind: Mapping[str, Processor]
    keys: tuple[str, ...]  # the result columns' names
    defaults: Mapping[str, Any]  # values bound when the statement was built
    required: frozenset[str]  # parameters each call must give
    # Columns whose values need converting, known once SQLAlchemy has run the statement
    # (a conversion may depend on the type the server reports).
    results: tuple[tuple[str, Processor], ...] | None = None


class DirectSelect:
    """A SELECT run on the driver itself on PostgreSQL read connections (see above)."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        # Per dialect (one per engine), dropped with the engine.
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled | None] = (
            weakref.WeakKeyDictionary()
        )

    async def all(
        self, connection: AsyncConnection, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Every row, as a dict by column name."""
        direct = self._direct(connection)
        if direct is None:
            return await fetch_all(connection, self.statement, params)
        compiled, sync = direct
        if compiled.results is None or not compiled.required <= params.keys():
            # The first run (or a call missing a parameter, for SQLAlchemy's message).
            result = await connection.execute(self.statement, dict(params))
            compiled.results = _result_processors(result, connection.dialect)
            return [dict(row._mapping) for row in result]
        driver: Any = sync.connection.driver_connection
        values = {**compiled.defaults, **params}
        bind = compiled.bind
        try:
            args = [
                bind[name](values[name]) if name in bind else values[name]
                for name in compiled.names
            ]
        except Exception:  # a value its column type refuses: SQLAlchemy's error, nothing sent
            return await fetch_all(connection, self.statement, params)
        try:
            records = await driver.fetch(compiled.sql, *args)
        except TimeoutError:
            raise  # as SQLAlchemy lets it through: a 503
        except Exception as error:
            if driver.is_closed():  # SQLAlchemy reports it and replaces the connection
                return await fetch_all(connection, self.statement, params)
            if isinstance(error, OSError):
                raise
            raise DBAPIError.instance(
                compiled.sql, args, error, Exception, dialect=connection.dialect
            ) from error
        except BaseException:
            sync.invalidate()
            raise
        rows = [dict(zip(compiled.keys, record, strict=True)) for record in records]
        for key, process in compiled.results:
            for row in rows:
                row[key] = process(row[key])
        return rows

    async def first(
        self, connection: AsyncConnection, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The first row, or None."""
        rows = await self.all(connection, params)
        return rows[0] if rows else None

    def _direct(self, connection: AsyncConnection) -> tuple[_Compiled, Connection] | None:
        """The compiled form and the connection when `connection` can run it on the
        driver, else None."""
        dialect = connection.dialect
        if dialect.driver != "asyncpg":
            return None
        sync = connection.sync_connection
        if sync is None or sync.closed or sync.invalidated:
            return None
        if sync._echo or _watched(sync):
            return None  # statements logged or traced: each one through SQLAlchemy
        if sync.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            return None  # a transaction's statements stay in SQLAlchemy's hands
        if dialect not in self._compiled:
            self._compiled[dialect] = _compile(self.statement, dialect)
        compiled = self._compiled[dialect]
        return None if compiled is None else (compiled, sync)


def _watched(connection: Connection) -> bool:
    """Whether anything listens to the statements `connection` runs (tracing does)."""
    events = connection.dispatch
    return bool(
        events.before_execute
        or events.after_execute
        or events.before_cursor_execute
        or events.after_cursor_execute
    )


def _compile(statement: Select[Any], dialect: Dialect) -> _Compiled | None:
    compiled: Any = statement.compile(dialect=dialect)
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None  # rendered anew on each call: SQLAlchemy's job
    if compiled.escaped_bind_names:
        return None  # names the driver's placeholders do not use as they are
    if any(bind.callable is not None for bind in compiled.binds.values()):
        return None  # a value computed on each execution
    return _Compiled(
        sql=compiled.string,
        names=tuple(compiled.positiontup or ()),
        bind=dict(compiled._bind_processors),
        keys=tuple(column.keyname for column in compiled._result_columns),
        defaults=compiled.construct_params(_check=False),
        required=frozenset(name for name, bind in compiled.binds.items() if bind.required),
    )


def _result_processors(result: Any, dialect: Dialect) -> tuple[tuple[str, Processor], ...]:
    """The conversions SQLAlchemy applies to `result`'s columns (by the column type and
    the type the server reported), for the rows read without it."""
    compiled = result.context.compiled
    described = result.cursor.description
    found = []
    for column, (_, server_type, *_) in zip(compiled._result_columns, described, strict=True):
        process = column.type._cached_result_processor(dialect, server_type)
        if process is not None:
            found.append((column.keyname, process))
    return tuple(found)


async def fetch_all(
    connection: AsyncConnection, statement: Select[Any], params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """`statement`'s rows through SQLAlchemy, as dicts by column name (what
    `DirectSelect` returns)."""
    result = await connection.execute(statement, dict(params))
    return [dict(row._mapping) for row in result]
