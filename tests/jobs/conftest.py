"""Fixtures for job tests: settings with a unique queue per test and a burst worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from arq.worker import Worker

from app.core.config import Settings
from app.jobs.registry import JobFunction
from app.jobs.worker import worker_options
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


def make_worker(
    settings: Settings, functions: Sequence[JobFunction[..., Any]], **options: Any
) -> Worker:
    """An in-process arq worker in burst mode: it stops once the queue is empty."""
    kwargs = worker_options(settings, functions=functions) | {
        "burst": True,
        "handle_signals": False,
        "poll_delay": 0.01,
    }
    return Worker(**(kwargs | options))


async def run_worker(
    settings: Settings, functions: Sequence[JobFunction[..., Any]], **options: Any
) -> Worker:
    """Run a burst worker to completion (bounded, in case a job hangs) and close it."""
    worker = make_worker(settings, functions, **options)
    try:
        async with asyncio.timeout(30):
            await worker.async_run()
    finally:
        await worker.close()
    return worker
