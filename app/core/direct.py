"""Statements that skip SQLAlchemy's execution layer where the driver can run them itself.

`DirectStatement(statement)` wraps a Core statement built once, with bound
parameters: a SELECT, or an INSERT or UPDATE with RETURNING. On asyncpg it compiles
the statement once, then sends it through the driver connection that SQLAlchemy's
pool checked out: one round trip, the rows as dicts, without the execution context
and result objects SQLAlchemy builds for every statement (about 0.1-0.3 ms of CPU
each, a fifth of an authenticated read). That holds on a read connection
(`ReadConnectionDep`, `read_engine`: PostgreSQL in AUTOCOMMIT) and inside a
transaction SQLAlchemy has begun (a session's connection): there the driver's
transaction is opened first (BEGIN) if SQLAlchemy has not sent anything yet, so
SQLAlchemy commits or rolls back the statement with the rest. Anywhere else (SQLite,
a connection outside any transaction, a statement SQLAlchemy must expand or fill in
per call) SQLAlchemy runs it, with the same rows.

Values go through the same type conversions as with SQLAlchemy (the column types'
bind and result processors, for this dialect, learned from SQLAlchemy's own first run
of the statement). Errors reach the app as SQLAlchemy reports them: a statement whose
connection died is handed to SQLAlchemy, which reports it and takes the connection out
of the pool; a server error is raised once as the `DBAPIError` subclass SQLAlchemy
would raise (`IntegrityError` for a duplicate key), carrying the server's SQLSTATE; a
timed-out statement raises `TimeoutError` (a 503); a cancelled one invalidates its
connection, whose state is then unknown. With SQL echo or engine events on
(`DB_ECHO`, tracing), every statement goes through SQLAlchemy, so each one is still
logged and traced.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable

Processor = Callable[[Any], Any]
Statement = TypeVar("Statement", bound=Executable)


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


class DirectStatement(Generic[Statement]):
    """A statement run on the driver itself on PostgreSQL (see above). For an INSERT,
    `columns` names the columns every call gives values for (what SQLAlchemy would
    infer from the first call's parameters)."""

    __slots__ = ("_compiled", "columns", "statement")

    def __init__(self, statement: Statement, *, columns: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.columns = None if columns is None else list(columns)
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
        compiled, sync, begin = direct
        if (
            compiled.results is None
            or not compiled.required <= params.keys()
            or (self.columns is not None and len(params) != len(self.columns))
        ):
            # The first run, a call missing a parameter (for SQLAlchemy's message), or an
            # INSERT of other columns than compiled.
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
        adapted: Any = sync.connection.dbapi_connection
        try:
            if begin and adapted._transaction is None:
                # BEGIN, as SQLAlchemy sends it before its transaction's first statement.
                await adapted._start_transaction()
            records = await driver.fetch(compiled.sql, *args)
        except TimeoutError:
            raise  # as SQLAlchemy lets it through: a 503
        except Exception as error:
            if driver.is_closed():  # SQLAlchemy reports it and replaces the connection
                return await fetch_all(connection, self.statement, params)
            if isinstance(error, OSError):
                raise
            raise _reported(compiled.sql, args, error, adapted, connection.dialect) from error
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

    def _direct(self, connection: AsyncConnection) -> tuple[_Compiled, Connection, bool] | None:
        """The compiled form, the connection and whether the statement belongs to a
        transaction when `connection` can run it on the driver, else None."""
        dialect = connection.dialect
        if dialect.driver != "asyncpg":
            return None
        sync = connection.sync_connection
        if sync is None or sync.closed or sync.invalidated:
            return None
        if sync._echo or _watched(sync):
            return None  # statements logged or traced: each one through SQLAlchemy
        begin = sync.get_execution_options().get("isolation_level") != "AUTOCOMMIT"
        if begin and not sync.in_transaction():
            return None  # SQLAlchemy begins (or, autocommitting, does not) on its own
        if dialect not in self._compiled:
            self._compiled[dialect] = _compile(self.statement, dialect, self.columns)
        compiled = self._compiled[dialect]
        return None if compiled is None else (compiled, sync, begin)


def _watched(connection: Connection) -> bool:
    """Whether anything listens to the statements `connection` runs (tracing does)."""
    events = connection.dispatch
    return bool(
        events.before_execute
        or events.after_execute
        or events.before_cursor_execute
        or events.after_cursor_execute
    )


def _compile(
    statement: Executable, dialect: Dialect, columns: list[str] | None
) -> _Compiled | None:
    compiled: Any = statement.compile(dialect=dialect, column_keys=columns)  # type: ignore[attr-defined]
    if compiled.literal_execute_params or compiled.post_compile_params:
        return None  # rendered anew on each call: SQLAlchemy's job
    if compiled.insert_prefetch or compiled.update_prefetch:
        return None  # column defaults computed in Python on each call
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
        # An INSERT's columns are all required: without one SQLAlchemy renders another
        # statement (the column left to its default).
        required=frozenset(name for name, bind in compiled.binds.items() if bind.required)
        | frozenset(columns or ()),
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


def _reported(
    sql: str, args: list[Any], error: Exception, adapted: Any, dialect: Dialect
) -> Exception:
    """`error` from the driver as SQLAlchemy raises it: the driver's exception translated
    by SQLAlchemy's adapter (a duplicate key becomes an `IntegrityError`), wrapped."""
    try:
        adapted._handle_exception(error)
    except Exception as translated:
        error = translated
    return DBAPIError.instance(sql, args, error, dialect.loaded_dbapi.Error, dialect=dialect)


async def fetch_all(
    connection: AsyncConnection, statement: Executable, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """`statement`'s rows through SQLAlchemy, as dicts by column name (what
    `DirectStatement` returns)."""
    result = await connection.execute(statement, dict(params))
    return [dict(row._mapping) for row in result]
