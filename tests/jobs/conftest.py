"""Fixtures for job tests: settings with a unique queue per test, a burst worker, and a
look at (and a relay of) the job outbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from arq.worker import Worker
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import create_redis
from app.core.config import Settings
from app.core.db import create_session_factory
from app.jobs.outbox import relay_outbox
from app.jobs.queue import JobQueue
from app.jobs.registry import JobFunction
from app.jobs.worker import CRON_JOBS, relay_job_outbox, worker_options
from app.models.job_outbox import OutboxJob
from tests.support import make_settings


def job_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "JOBS_QUEUE_NAME": f"test:jobs:{uuid.uuid4().hex}",
        "JOB_RETRY_DELAY": 0.01,
        "JOB_KEEP_RESULT": 60,
    }
    return make_settings(database_url, **(values | overrides))


@pytest.fixture
def settings(database_url: str, redis_url: str, clean_db: None) -> Settings:
    return job_settings(database_url, redis_url)


# The registered cron jobs (their functions stay callable by name), but not the outbox
# relay: run at start-up and every few seconds, it would add runs tests do not expect.
# Tests of the relay pass `cron_jobs=CRON_JOBS`.
TEST_CRON_JOBS = tuple(entry for entry in CRON_JOBS if entry[0] is not relay_job_outbox)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[JobQueue]:
    """A queue on the test's own queue name."""
    redis = create_redis(settings)
    assert redis is not None
    yield JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    await redis.aclose()


def make_worker(
    settings: Settings,
    functions: Sequence[JobFunction[..., Any]],
    *,
    cron_jobs: Sequence[tuple[JobFunction[..., Any], dict[str, Any]]] = TEST_CRON_JOBS,
    **options: Any,
) -> Worker:
    """An in-process arq worker in burst mode: it stops once the queue is empty."""
    kwargs = worker_options(settings, functions=functions, cron_jobs=cron_jobs) | {
        "burst": True,
        "handle_signals": False,
        "poll_delay": 0.01,
    }
    return Worker(**(kwargs | options))


async def run_worker(
    settings: Settings,
    functions: Sequence[JobFunction[..., Any]],
    *,
    cron_jobs: Sequence[tuple[JobFunction[..., Any], dict[str, Any]]] = TEST_CRON_JOBS,
    **options: Any,
) -> Worker:
    """Run a burst worker to completion (bounded, in case a job hangs) and close it."""
    worker = make_worker(settings, functions, cron_jobs=cron_jobs, **options)
    try:
        async with asyncio.timeout(30):
            await worker.async_run()
    finally:
        await worker.close()
    return worker


async def outbox_ids(engine: AsyncEngine) -> list[str]:
    """The ids of the jobs waiting in the outbox."""
    async with engine.connect() as conn:
        return list((await conn.execute(select(col(OutboxJob.id)))).scalars())


async def relay_now(settings: Settings, engine: AsyncEngine) -> int:
    """Run the outbox relay once, taking rows however young (the worker's waits a few
    seconds for the API's own send); returns how many jobs it sent."""
    redis = create_redis(settings)
    assert redis is not None
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        return await relay_outbox(create_session_factory(engine), queue, min_age=0)
    finally:
        await redis.aclose()
