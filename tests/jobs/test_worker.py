"""The worker, in process and in burst mode, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.core.cache import create_redis
from app.core.config import Settings
from app.core.exceptions import ServiceUnavailableError
from app.jobs.queue import JobInfo, JobQueue, JobState
from app.jobs.registry import JobContext, JobFunction, PermanentJobError, job, retry_delay
from app.jobs.serialization import JobPayloadError
from tests.jobs.conftest import job_settings, make_worker, run_worker
from tests.support import CLOSED_PORT_URL, free_port, hung_server

ROOT = Path(__file__).resolve().parents[2]
ARQ = str(Path(sys.executable).parent / "arq")

attempts: dict[str, list[int]] = {}
gates: dict[str, asyncio.Event] = {}


@job(name="test_always_fails", max_tries=3)
async def always_fails(ctx: JobContext, marker: str) -> None:
    attempts.setdefault(marker, []).append(ctx.job_try)
    raise RuntimeError("the disk is on fire")


@job(name="test_fails_permanently")
async def fails_permanently(ctx: JobContext, marker: str) -> None:
    attempts.setdefault(marker, []).append(ctx.job_try)
    raise PermanentJobError("no such export")


@job(name="test_flaky")
async def flaky(ctx: JobContext, marker: str) -> dict[str, object]:
    attempts.setdefault(marker, []).append(ctx.job_try)
    if ctx.job_try < 2:
        raise ConnectionError("try again")
    return {"tries": ctx.job_try, "ok": True}


@job(name="test_waits")
async def waits(ctx: JobContext, marker: str, payload: dict[str, object]) -> dict[str, object]:
    await gates[marker].wait()
    return {"echo": payload}


async def wait_for_state(queue: JobQueue, job_id: str, state: JobState) -> JobInfo:
    async with asyncio.timeout(10):
        while True:
            info = await queue.info(job_id)
            if info is not None and info.state is state:
                return info
            await asyncio.sleep(0.01)


async def test_a_failing_job_retries_with_backoff_then_reports_failed(
    settings: Settings, queue: JobQueue
) -> None:
    marker = uuid.uuid4().hex
    job_id = await queue.enqueue(always_fails, marker, _owner="u1")
    worker = await run_worker(settings, [always_fails])
    assert attempts[marker] == [1, 2, 3]
    assert (worker.jobs_retried, worker.jobs_failed) == (2, 1)
    info = await queue.info(job_id)
    assert info is not None
    assert info.state is JobState.FAILED
    assert info.error == "RuntimeError"
    assert info.attempts == 3
    assert info.owner == "u1"


async def test_a_transient_failure_succeeds_on_retry(settings: Settings, queue: JobQueue) -> None:
    marker = uuid.uuid4().hex
    job_id = await queue.enqueue(flaky, marker)
    await run_worker(settings, [flaky])
    info = await queue.info(job_id)
    assert info is not None
    assert (info.state, info.result, info.error) == (
        JobState.COMPLETE,
        {"tries": 2, "ok": True},
        None,
    )


async def test_a_permanent_error_fails_without_retrying(
    settings: Settings, queue: JobQueue
) -> None:
    marker = uuid.uuid4().hex
    job_id = await queue.enqueue(fails_permanently, marker)
    await run_worker(settings, [fails_permanently])
    assert attempts[marker] == [1]
    info = await queue.info(job_id)
    assert info is not None
    assert (info.state, info.error) == (JobState.FAILED, "PermanentJobError")


async def test_each_retry_is_deferred_twice_as_long_as_the_last(
    database_url: str, redis_url: str
) -> None:
    settings = job_settings(database_url, redis_url, JOB_RETRY_DELAY=60)
    redis = create_redis(settings)
    assert redis is not None
    queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    marker = uuid.uuid4().hex
    try:
        job_id = await queue.enqueue(always_fails, marker)
        for expected_delay in (60, 120):
            await run_worker(settings, [always_fails], max_burst_jobs=1)
            score = await redis.zscore(settings.JOBS_QUEUE_NAME, job_id)
            assert score is not None
            delay = score / 1000 - time.time()
            assert expected_delay - 5 < delay <= expected_delay + 1  # ms rounding in the score
            info = await queue.info(job_id)
            assert info is not None
            assert info.state is JobState.QUEUED
            await redis.zadd(settings.JOBS_QUEUE_NAME, {job_id: time.time() * 1000})
        assert attempts[marker] == [1, 2]
    finally:
        await redis.zrem(settings.JOBS_QUEUE_NAME, job_id)
        await redis.delete(f"arq:job:{job_id}", f"arq:retry:{job_id}")
        await redis.aclose()


def test_retry_delays_grow_exponentially_up_to_a_cap() -> None:
    assert [retry_delay(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(30, 5.0) == 600.0
    assert retry_delay(10_000, 5.0, cap=60.0) == 60.0


async def test_status_goes_queued_in_progress_complete(settings: Settings, queue: JobQueue) -> None:
    marker = uuid.uuid4().hex
    gates[marker] = asyncio.Event()
    payload = {"name": "Zoë", "sizes": [1, 2.5], "nested": {"ok": True, "none": None}}
    job_id = await queue.enqueue(waits, marker, payload, _owner="u1")
    queued = await queue.info(job_id)
    assert queued is not None
    assert (queued.state, queued.function, queued.attempts) == (JobState.QUEUED, "test_waits", 0)
    assert isinstance(queued.enqueued_at, datetime)

    worker = make_worker(settings, [waits])
    running = asyncio.create_task(worker.async_run())
    try:
        in_progress = await wait_for_state(queue, job_id, JobState.IN_PROGRESS)
        assert in_progress.attempts == 1
        gates[marker].set()
        async with asyncio.timeout(10):
            await running
    finally:
        await worker.close()
    done = await queue.info(job_id)
    assert done is not None
    assert done.state is JobState.COMPLETE
    assert done.result == {"echo": payload}
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at


async def test_non_json_arguments_are_refused_at_enqueue(
    settings: Settings, queue: JobQueue
) -> None:
    with pytest.raises(JobPayloadError, match=r"args\[1\]\['when'\] is a datetime"):
        await queue.enqueue(waits, "m", {"when": datetime.now()})
    with pytest.raises(JobPayloadError, match="int key"):
        await queue.enqueue(waits, "m", {1: "one"})
    with pytest.raises(JobPayloadError, match="nan"):
        await queue.enqueue(waits, "m", {"x": float("nan")})
    with pytest.raises(JobPayloadError, match="unexpected keyword argument 'colour'"):
        await queue.enqueue(waits, "m", {}, colour="red")
    assert await queue.redis.zcard(settings.JOBS_QUEUE_NAME) == 0


async def test_enqueue_with_redis_down_is_service_unavailable(database_url: str) -> None:
    settings = job_settings(database_url, f"redis://{CLOSED_PORT_URL}/0")
    redis = create_redis(settings)
    assert redis is not None
    queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    try:
        with pytest.raises(ServiceUnavailableError):
            await queue.enqueue(waits, "m", {})
        with pytest.raises(ServiceUnavailableError):
            await queue.info(uuid.uuid4().hex)
    finally:
        await redis.aclose()


async def test_a_hung_redis_costs_enqueue_at_most_the_socket_timeout(database_url: str) -> None:
    async with hung_server() as address:
        settings = job_settings(database_url, f"redis://{address}/0", REDIS_SOCKET_TIMEOUT=0.2)
        redis = create_redis(settings)
        assert redis is not None
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        try:
            async with asyncio.timeout(5):
                with pytest.raises(ServiceUnavailableError):
                    await queue.enqueue(waits, "m", {})
        finally:
            await redis.aclose()


async def worker_check(settings: Settings) -> int:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ENVIRONMENT": "test",
        "REDIS_URL": settings.REDIS_URL,
        "JOBS_QUEUE_NAME": settings.JOBS_QUEUE_NAME,
    }
    process = await asyncio.create_subprocess_exec(
        ARQ,
        "--check",
        "app.jobs.worker.WorkerSettings",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        return await process.wait()


async def test_the_health_check_command_passes_only_while_a_worker_reports(
    database_url: str, redis_url: str
) -> None:
    settings = job_settings(database_url, redis_url)
    assert await worker_check(settings) == 1
    worker = make_worker(settings, [waits])
    try:
        async with asyncio.timeout(30):
            await worker.async_run()  # burst: records its health, then stops polling
        assert await worker_check(settings) == 0
    finally:
        await worker.close()  # a stopping worker withdraws its health key
    assert await worker_check(settings) == 1


async def test_the_health_check_reports_the_worker_on_this_host_only(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = job_settings(database_url, redis_url)
    with monkeypatch.context() as elsewhere:  # a replica on another pod
        elsewhere.setattr(socket, "gethostname", lambda: f"other-pod-{uuid.uuid4().hex}")
        other = make_worker(settings, [waits])
    try:
        async with asyncio.timeout(30):
            await other.async_run()
        # Another replica reporting says nothing about a stalled worker here.
        assert await worker_check(settings) == 1
        mine = make_worker(settings, [waits])
        try:
            async with asyncio.timeout(30):
                await mine.async_run()
            # Another replica stopping (it withdraws its key) does not fail this one.
            await other.close()
            assert await worker_check(settings) == 0
        finally:
            await mine.close()
    finally:
        await other.close()


async def test_the_worker_without_redis_exits_with_a_message_not_a_traceback() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "ENVIRONMENT": "test", "REDIS_URL": ""}
    process = await asyncio.create_subprocess_exec(
        ARQ, "--check", "app.jobs.worker.WorkerSettings",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode != 0
    assert "REDIS_URL must be set" in stderr.decode()
    assert "Traceback" not in stderr.decode()


def job_count(name: str, function: str) -> float:
    return REGISTRY.get_sample_value(name, {"function": function}) or 0.0


async def test_job_outcomes_are_counted_by_function(settings: Settings, queue: JobQueue) -> None:
    names = (
        "jobs_started_total",
        "jobs_retried_total",
        "jobs_failed_total",
        "jobs_completed_total",
        "job_duration_seconds_count",
    )
    functions: tuple[JobFunction[..., Any], ...] = (always_fails, flaky, fails_permanently)
    before = {(n, f.name): job_count(n, f.name) for n in names for f in functions}
    for function in functions:
        await queue.enqueue(function, uuid.uuid4().hex)
    await run_worker(settings, list(functions))
    counted = {key: job_count(*key) - value for key, value in before.items()}
    # started, retried, failed, completed, timed
    expected = {"test_always_fails": (3, 2, 1, 0, 3), "test_flaky": (2, 1, 0, 1, 2)}
    expected["test_fails_permanently"] = (1, 0, 1, 0, 1)
    for function_name, counts in expected.items():
        assert tuple(counted[name, function_name] for name in names) == counts, function_name


async def test_the_worker_serves_metrics_with_the_queue_depth_on_its_own_port(
    database_url: str, redis_url: str, clean_db: None
) -> None:
    port = free_port()
    settings = job_settings(
        database_url, redis_url, WORKER_METRICS_PORT=port, METRICS_HOST="127.0.0.1"
    )
    redis = create_redis(settings)
    assert redis is not None
    queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    for _ in range(3):  # due in an hour: they wait in the queue while the worker runs
        await queue.enqueue(flaky, uuid.uuid4().hex, _defer_by=3600)
    worker = make_worker(settings, [flaky], burst=False)
    running = asyncio.create_task(worker.async_run())
    try:
        text = ""
        async with httpx.AsyncClient() as client, asyncio.timeout(10):
            while "job_queue_depth" not in text:
                await asyncio.sleep(0.05)
                with contextlib.suppress(httpx.TransportError):
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()
        await redis.aclose()
    depth = f'job_queue_depth{{queue="{settings.JOBS_QUEUE_NAME}"}} 3.0'
    assert depth in text.splitlines()
    assert 'component="worker"' in text
