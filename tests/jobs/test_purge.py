"""The purge cron removes exactly the rows soft-deleted before the retention period, and
the idempotency records older than their 24 h lifetime."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Table, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import create_redis
from app.core.db import create_session_factory, session_context
from app.jobs.purge import purge_idempotency_records, purge_soft_deleted, purge_table
from app.jobs.queue import JobQueue
from app.models import base
from app.models.base import purgeable, utcnow
from app.models.idempotency import IdempotencyRecord
from app.services.idempotency import expiry_cutoff
from tests.jobs.conftest import job_settings, run_worker
from tests.tables import Note, Trash


async def insert_trash(engine: AsyncEngine, deleted_days_ago: dict[str, float | None]) -> None:
    now = utcnow()
    async with session_context(create_session_factory(engine)) as session:
        for label, days in deleted_days_ago.items():
            deleted_at = None if days is None else now - timedelta(days=days)
            session.add(Trash(label=label, deleted_at=deleted_at))


def trash_table() -> Table:
    table = inspect(Trash).local_table
    assert isinstance(table, Table)
    return table


async def remaining_labels(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(col(Trash.label)))).scalars())


async def insert_idempotency_records(
    engine: AsyncEngine, created_hours_ago: dict[str, float]
) -> None:
    now = utcnow()
    async with session_context(create_session_factory(engine)) as session:
        for key, hours in created_hours_ago.items():
            session.add(
                IdempotencyRecord(
                    scope="s" * 64,
                    key=key,
                    fingerprint="f" * 64,
                    status_code=201,
                    body="{}",
                    created_at=now - timedelta(hours=hours),
                )
            )


async def remaining_keys(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(col(IdempotencyRecord.key)))).scalars())


async def test_purge_table_deletes_only_rows_deleted_before_the_cutoff(
    db_engine: AsyncEngine, tables: None
) -> None:
    await insert_trash(
        db_engine,
        {"live": None, "old-1": 45, "old-2": 31, "old-3": 30.01, "recent": 29.9, "today": 0},
    )
    factory = create_session_factory(db_engine)
    cutoff = utcnow() - timedelta(days=30)
    deleted = await purge_table(factory, trash_table(), deleted_before=cutoff, batch_size=2)
    assert deleted == 3
    assert await remaining_labels(db_engine) == {"live", "recent", "today"}
    assert await purge_table(factory, trash_table(), deleted_before=cutoff) == 0


async def test_expired_idempotency_records_are_purged_in_batches(
    db_engine: AsyncEngine, clean_db: None
) -> None:
    await insert_idempotency_records(
        db_engine, {"old-1": 24 * 30, "old-2": 48, "old-3": 24.1, "fresh": 23.9, "new": 0}
    )
    factory = create_session_factory(db_engine)
    cutoff = expiry_cutoff()
    deleted = await purge_idempotency_records(factory, created_before=cutoff, batch_size=2)
    assert deleted == 3
    assert await remaining_keys(db_engine) == {"fresh", "new"}
    assert await purge_idempotency_records(factory, created_before=cutoff) == 0


async def test_the_purge_job_purges_registered_models_with_the_configured_retention(
    database_url: str,
    redis_url: str,
    db_engine: AsyncEngine,
    tables: None,
    clean_db: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "_PURGEABLE", {})
    purgeable(Trash)
    settings = job_settings(database_url, redis_url, SOFT_DELETE_RETENTION_DAYS=7)
    await insert_trash(db_engine, {"live": None, "expired": 8, "kept": 6})
    await insert_idempotency_records(db_engine, {"expired": 25, "live": 1})
    redis = create_redis(settings)
    assert redis is not None
    try:
        await JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME).enqueue(purge_soft_deleted)
    finally:
        await redis.aclose()
    worker = await run_worker(settings, [])
    assert worker.jobs_complete == 1
    assert await remaining_labels(db_engine) == {"live", "kept"}
    assert await remaining_keys(db_engine) == {"live"}


def test_only_table_models_can_be_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_PURGEABLE", {})
    with pytest.raises(TypeError, match="not a table model"):
        purgeable(base.SoftDeleteMixin)
    assert base.purgeable_models() == ()
    assert purgeable(Trash) is Trash
    assert base.purgeable_models() == (Trash,)
    registered: tuple[type, ...] = base.purgeable_models()
    assert Note not in registered
