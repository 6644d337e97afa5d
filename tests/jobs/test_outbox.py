"""The job outbox relay: it sends what the after-commit send left behind, once each."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import create_redis
from app.core.config import Settings
from app.core.db import create_session_factory, session_context
from app.core.exceptions import ServiceUnavailableError
from app.jobs.outbox import job_info_for, outbox_row, relay_outbox
from app.jobs.queue import JobQueue, JobState, PreparedJob
from app.jobs.registry import JobContext, job
from app.jobs.worker import CRON_JOBS
from app.models.base import utcnow
from app.models.job_outbox import OutboxJob
from tests.jobs.conftest import job_settings, outbox_ids, run_worker
from tests.support import CLOSED_PORT_URL

runs: dict[str, int] = {}


@job(name="test_outbox_echo")
async def echo(ctx: JobContext, word: str) -> str:
    runs[word] = runs.get(word, 0) + 1
    return word


async def store(engine: AsyncEngine, *jobs: PreparedJob, age: float = 60.0) -> None:
    """Put jobs in the outbox as if committed `age` seconds ago and never sent."""
    async with session_context(create_session_factory(engine)) as session:
        for prepared in jobs:
            row = outbox_row(prepared)
            row.created_at = utcnow() - timedelta(seconds=age)
            session.add(row)


def echo_job(queue: JobQueue, *, owner: str | None = "owner-1", **options: float) -> PreparedJob:
    return queue.prepare(echo, (uuid.uuid4().hex,), {}, owner=owner, **options)


async def delay_of(queue: JobQueue, settings: Settings, job_id: str) -> float:
    """Seconds until the queued job is due (negative: overdue)."""
    score = await queue.redis.zscore(settings.JOBS_QUEUE_NAME, job_id)
    assert score is not None, f"job {job_id} is not queued"
    return float(score) / 1000 - time.time()


async def test_the_relay_sends_old_rows_keeping_deferrals_and_deletes_what_it_sent(
    settings: Settings, queue: JobQueue, db_engine: AsyncEngine
) -> None:
    now, young = echo_job(queue), echo_job(queue)
    later = echo_job(queue, defer_by=3600)
    overdue = dataclasses.replace(echo_job(queue), defer_until=utcnow() - timedelta(days=2))
    await store(db_engine, now, later, overdue)
    await store(db_engine, young, age=0)

    assert await relay_outbox(create_session_factory(db_engine), queue) == 3
    assert await outbox_ids(db_engine) == [young.id]  # left to its own after-commit send
    assert abs(await delay_of(queue, settings, now.id)) < 5
    assert 3590 < await delay_of(queue, settings, later.id) <= 3600
    assert abs(await delay_of(queue, settings, overdue.id)) < 5  # due now, not expired

    await run_worker(settings, [echo], max_burst_jobs=2)  # the deferred one keeps waiting
    for prepared, state in ((now, JobState.COMPLETE), (later, JobState.QUEUED)):
        info = await queue.info_for(prepared.id, "owner-1")
        assert info is not None
        assert info.state is state
    assert runs[now.args[0]] == runs[overdue.args[0]] == 1


async def test_a_relay_that_cannot_reach_redis_keeps_the_rows_and_counts_the_attempt(
    settings: Settings, queue: JobQueue, db_engine: AsyncEngine
) -> None:
    first, second = echo_job(queue), echo_job(queue)
    await store(db_engine, first)
    await store(db_engine, second, age=30)
    down_settings = job_settings(settings.DATABASE_URL, f"redis://{CLOSED_PORT_URL}/0")
    redis = create_redis(down_settings)
    assert redis is not None
    try:
        down = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        assert await relay_outbox(create_session_factory(db_engine), down) == 0
    finally:
        await redis.aclose()
    async with db_engine.connect() as conn:
        rows = (await conn.execute(select(col(OutboxJob.id), col(OutboxJob.attempts)))).all()
    # The oldest was tried and failed; the rest wait for the next run untouched.
    assert sorted(rows) == sorted([(first.id, 1), (second.id, 0)])
    assert await relay_outbox(create_session_factory(db_engine), queue) == 2
    assert await outbox_ids(db_engine) == []


async def test_a_job_the_queue_already_ran_is_not_run_again_by_the_relay(
    settings: Settings, queue: JobQueue, db_engine: AsyncEngine
) -> None:
    # Sent after the commit, then the process died before deleting the row.
    prepared = echo_job(queue)
    await store(db_engine, prepared)
    await queue.send(prepared)
    await run_worker(settings, [echo])

    assert await relay_outbox(create_session_factory(db_engine), queue) == 1
    assert await outbox_ids(db_engine) == []
    assert (await run_worker(settings, [echo])).jobs_complete == 0
    assert runs[prepared.args[0]] == 1


class RecordingQueue(JobQueue):
    """Records every send; with `hold`, the first send waits until `hold` is set."""

    def __init__(
        self, base: JobQueue, sent: list[str], *, has_sent: asyncio.Event, hold: bool
    ) -> None:
        super().__init__(base.redis, queue_name=base.queue_name)
        self.sent = sent
        self.has_sent = has_sent
        self.hold = hold

    async def send(self, job: PreparedJob) -> None:
        self.sent.append(job.id)
        if self.hold:
            async with asyncio.timeout(10):
                await self.has_sent.wait()
        else:
            self.has_sent.set()
        await super().send(job)


async def test_concurrent_relays_send_each_row_once(
    settings: Settings, queue: JobQueue, postgres_engine: AsyncEngine
) -> None:
    """On PostgreSQL whatever the suite's backend: SQLite has no row locks to skip."""
    db_engine = postgres_engine
    jobs = [echo_job(queue) for _ in range(30)]
    await store(db_engine, *jobs)
    sent: list[str] = []
    factory = create_session_factory(db_engine)
    # One relay stalls in its first send, its batch locked, until the other has sent a
    # job: the other must have claimed different rows, neither waiting nor repeating.
    has_sent = asyncio.Event()
    holding = RecordingQueue(queue, sent, has_sent=has_sent, hold=True)
    other = RecordingQueue(queue, sent, has_sent=has_sent, hold=False)
    counts = await asyncio.gather(
        relay_outbox(factory, holding, batch_size=4), relay_outbox(factory, other, batch_size=4)
    )
    assert sorted(sent) == sorted(prepared.id for prepared in jobs)  # each once
    assert counts[0] >= 1
    assert counts[1] >= 1
    assert sum(counts) == 30
    assert await outbox_ids(db_engine) == []


async def test_the_worker_relays_the_outbox_when_it_starts(
    settings: Settings, queue: JobQueue, db_engine: AsyncEngine
) -> None:
    prepared = echo_job(queue)
    await store(db_engine, prepared)
    await run_worker(settings, [echo], cron_jobs=CRON_JOBS)
    info = await queue.info_for(prepared.id, "owner-1")
    assert info is not None
    assert (info.state, info.result) == (JobState.COMPLETE, prepared.args[0])
    assert await outbox_ids(db_engine) == []


async def test_a_job_in_the_outbox_is_queued_to_its_owner_only(
    settings: Settings, queue: JobQueue, db_engine: AsyncEngine
) -> None:
    mine, ownerless = echo_job(queue), echo_job(queue, owner=None)
    await store(db_engine, mine, ownerless)
    async with session_context(create_session_factory(db_engine)) as session:
        info = await job_info_for(queue, session, mine.id, "owner-1")
        assert info is not None
        assert (info.state, info.function, info.attempts) == (
            JobState.QUEUED,
            "test_outbox_echo",
            0,
        )
        assert await job_info_for(queue, session, mine.id, "owner-2") is None
        assert await job_info_for(queue, session, ownerless.id, "owner-1") is None
        assert await job_info_for(queue, session, uuid.uuid4().hex, "owner-1") is None

    down_settings = job_settings(settings.DATABASE_URL, f"redis://{CLOSED_PORT_URL}/0")
    redis = create_redis(down_settings)
    assert redis is not None
    down = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    try:
        async with session_context(create_session_factory(db_engine)) as session:
            info = await job_info_for(down, session, mine.id, "owner-1")
            assert info is not None
            assert info.state is JobState.QUEUED
            with pytest.raises(ServiceUnavailableError):  # unknown here; Redis may know it
                await job_info_for(down, session, mine.id, "owner-2")
    finally:
        await redis.aclose()
