"""Async database engine, sessions and the request transaction boundary.

`create_engine` builds the engine for PostgreSQL (asyncpg) or SQLite (aiosqlite)
from settings; the app's lifespan owns it. `get_session` (`SessionDep`) is the one
transaction boundary for requests: it commits when the handler succeeds and rolls
back when anything raises. Scripts and jobs use `session_context`, which behaves the
same. Handlers that only read use `ReadSessionDep`: no transaction, one round trip
per query.

`on_commit(session, callback)` defers work (sending a job, say) until the session's
transaction has committed; a rollback discards it, so nothing leaves the process
for data that was never stored. `on_rollback(session, callback)` is the opposite:
clean-up (releasing a claim, say) for when the transaction does not commit, whether
the handler raised or the commit itself failed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, StaticPool
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.core.metrics import TimedQueuePool
from app.core.pool import FairQueuePool

SessionFactory = async_sessionmaker[AsyncSession]
AfterCommit = Callable[[], Awaitable[None]]

logger = logging.getLogger(__name__)
_AFTER_COMMIT = "after_commit"
_AFTER_ROLLBACK = "after_rollback"


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _engine_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"echo": settings.DB_ECHO}
    if settings.is_sqlite and ":memory:" in settings.DATABASE_URL:
        options["poolclass"] = StaticPool
    elif settings.DB_USE_NULL_POOL:
        options["poolclass"] = NullPool
    else:
        # Pre-ping is off by default: on asyncpg it costs three round trips per checkout
        # (BEGIN, a no-op, ROLLBACK). Connections are recycled before servers or proxies
        # drop them, and a connection found dead invalidates the whole pool, so a database
        # restart costs at most one failed request per process.
        options["poolclass"] = TimedQueuePool if settings.METRICS_PORT else FairQueuePool
        options |= {
            "pool_size": settings.DB_POOL_SIZE,
            "max_overflow": settings.DB_MAX_OVERFLOW,
            "pool_timeout": settings.DB_POOL_TIMEOUT,
            "pool_recycle": settings.DB_POOL_RECYCLE,
            "pool_pre_ping": settings.DB_POOL_PRE_PING,
        }
    if not settings.is_sqlite:
        # Every wait on the server is bounded, so an unreachable or partitioned database
        # costs a 503 after seconds, not a request hanging for as long as the outage.
        # On a timeout asyncpg also asks the server to cancel the query.
        connect_args: dict[str, Any] = {
            "timeout": settings.DB_CONNECT_TIMEOUT,
            "command_timeout": settings.DB_COMMAND_TIMEOUT,
        }
        if settings.DB_USE_NULL_POOL:
            # pgbouncer in transaction mode cannot keep server-side prepared statements.
            connect_args["statement_cache_size"] = 0
        options["connect_args"] = connect_args
    return options


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(settings.DATABASE_URL, **_engine_options(settings))
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def read_engine(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for reads: on PostgreSQL each statement runs on its own (AUTOCOMMIT, no
    BEGIN/COMMIT round trips); SQLite's driver already runs plain SELECTs outside a
    transaction. The same pool either way."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def create_read_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions for work that only reads: a read costs one round trip and holds a pooled
    connection no longer than that. On PostgreSQL each statement runs on its own (no
    BEGIN/COMMIT around it); SQLite's driver already runs plain SELECTs outside a
    transaction, and switching its isolation level would cost more than it saves.
    A single-statement write (an upsert) still works, inside `session_context`;
    anything that writes more than once belongs in `SessionDep`."""
    return create_session_factory(read_engine(engine))


def on_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once `session_context` (or `SessionDep`) has committed `session`;
    drop it if the transaction rolls back. Callbacks run in order; one that raises is
    logged and does not stop the others or undo the commit."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def on_rollback(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` if `session_context` (or `SessionDep`) rolls `session` back
    instead of committing it; drop it after a commit. Same rules as `on_commit`."""
    session.info.setdefault(_AFTER_ROLLBACK, []).append(callback)


async def _run_callbacks(session: AsyncSession, run: str, drop: str) -> None:
    session.info.pop(drop, None)
    callbacks: list[AfterCommit] = session.info.pop(run, [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            logger.exception("%s callback %r failed", run.replace("_", "-"), callback)


@asynccontextmanager
async def session_context(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose transaction commits on success and rolls back on error; work
    registered with `on_commit` runs after the commit, `on_rollback` work after a
    rollback."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            try:
                await session.rollback()
            finally:
                await _run_callbacks(session, _AFTER_ROLLBACK, drop=_AFTER_COMMIT)
            raise
        await _run_callbacks(session, _AFTER_COMMIT, drop=_AFTER_ROLLBACK)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session: committed after the handler returns, before the response."""
    async with session_context(request.state.session_factory) as session:
        yield session


# scope="function" runs the commit before the response is sent, so a failed commit
# becomes an error response instead of a 2xx for data that was never stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for handlers that only read (see `create_read_session_factory`)."""
    async with request.state.read_session_factory() as session:
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


async def get_session_factory(request: Request) -> SessionFactory:
    """The session factory, for a handler that must not hold a connection across slow
    I/O (an upload streaming in): it opens short transactions with `session_context`."""
    factory: SessionFactory = request.state.session_factory
    return factory


SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]


async def get_read_connection(request: Request) -> AsyncIterator[AsyncConnection]:
    """A bare read connection (see `read_engine`) for handlers whose reads are Core
    statements, such as the resource store's: no ORM session to build and tear down."""
    async with request.state.read_engine.connect() as connection:
        yield connection


ReadConnectionDep = Annotated[AsyncConnection, Depends(get_read_connection, scope="function")]


async def init_db(engine: AsyncEngine) -> None:
    """Create every table from the models (tests only; real databases use migrations)."""
    import app.models  # noqa: F401  (registers every table on the metadata)

    async with engine.begin() as conn:
        await conn.run_sync(SQLModel.metadata.create_all)
