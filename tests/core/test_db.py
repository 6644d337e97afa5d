"""`session_context`, `on_commit` and `on_rollback`: deferred work runs after a commit
(or only after a rollback), never after the other."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.core.db import create_session_factory, on_commit, on_rollback, session_context
from tests.tables import Note


async def visible_notes(engine: AsyncEngine) -> int:
    """Rows another connection can see, i.e. committed ones."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(Note))).scalar_one())


async def test_callbacks_run_in_order_after_the_commit(
    db_engine: AsyncEngine, tables: None
) -> None:
    seen: list[tuple[str, int]] = []

    async def record(name: str) -> None:
        seen.append((name, await visible_notes(db_engine)))

    async with session_context(create_session_factory(db_engine)) as session:
        session.add(Note(title="a"))
        on_commit(session, lambda: record("first"))
        on_commit(session, lambda: record("second"))
        await session.flush()
        assert seen == []
    assert seen == [("first", 1), ("second", 1)]


async def test_callbacks_are_dropped_on_rollback(db_engine: AsyncEngine, tables: None) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append("ran")

    async def failing_transaction() -> None:
        async with session_context(create_session_factory(db_engine)) as session:
            session.add(Note(title="a"))
            on_commit(session, record)
            await session.flush()
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        await failing_transaction()
    assert seen == []
    assert await visible_notes(db_engine) == 0


async def test_a_failing_callback_is_logged_and_does_not_stop_the_others(
    db_engine: AsyncEngine, tables: None, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def broken() -> None:
        raise ConnectionError("queue down")

    async def fine() -> None:
        seen.append("fine")

    with caplog.at_level(logging.ERROR, logger="app.core.db"):
        async with session_context(create_session_factory(db_engine)) as session:
            session.add(Note(title="kept"))
            on_commit(session, broken)
            on_commit(session, fine)
    assert seen == ["fine"]
    assert await visible_notes(db_engine) == 1
    assert [r.exc_info is not None for r in caplog.records if r.name == "app.core.db"] == [True]


async def test_rollback_callbacks_run_only_when_the_transaction_does_not_commit(
    db_engine: AsyncEngine, tables: None
) -> None:
    seen: list[str] = []

    async def record(name: str) -> None:
        seen.append(name)

    async with session_context(create_session_factory(db_engine)) as session:
        session.add(Note(title="kept"))
        on_commit(session, lambda: record("committed"))
        on_rollback(session, lambda: record("rolled back"))
    assert seen == ["committed"]

    async def failing_transaction() -> None:
        async with session_context(create_session_factory(db_engine)) as session:
            on_commit(session, lambda: record("committed again"))
            on_rollback(session, lambda: record("rolled back"))
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        await failing_transaction()
    assert seen == ["committed", "rolled back"]


async def test_a_failed_commit_runs_the_rollback_callbacks(
    db_engine: AsyncEngine, tables: None
) -> None:
    seen: list[str] = []

    async def record(name: str) -> None:
        seen.append(name)

    def refuse(_: Session) -> None:
        raise RuntimeError("commit refused")

    async def commit_refused() -> None:
        async with session_context(create_session_factory(db_engine)) as session:
            session.add(Note(title="lost"))
            on_commit(session, lambda: record("committed"))
            on_rollback(session, lambda: record("rolled back"))
            event.listen(session.sync_session, "before_commit", refuse)

    with pytest.raises(RuntimeError, match="commit refused"):
        await commit_refused()
    assert seen == ["rolled back"]
    assert await visible_notes(db_engine) == 0
