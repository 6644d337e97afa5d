"""The arq worker: `arq app.jobs.worker.WorkerSettings` runs it, `arq --check ...` probes it.

`FUNCTIONS` and `CRON_JOBS` below are the one place jobs are registered; among the
cron jobs, `relay_job_outbox` sends, at start-up and every `RELAY_INTERVAL` seconds,
the jobs that were committed but never queued (Redis was down, or a process died
between commit and send; see `outbox.py`). On start-up the worker opens its own
database engine, session factory and Redis client (closed on shutdown), and, when the
OTEL_* variables turn tracing on, its tracer provider (flushed on shutdown).
`WorkerSettings` is built from `get_settings()` the first time it is looked up, so
importing this module reads no configuration and opens nothing; tests build their own
with `worker_options(settings, ...)`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from arq.connections import RedisSettings

from app.core import tracing
from app.core.cache import Cache, RedisBreaker, create_redis
from app.core.config import ConfigError, Settings, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.error_reporting import init_error_reporting
from app.core.logging import setup_logging
from app.core.metrics import start_metrics_server
from app.integrations.email import create_mailer, require_email_extra
from app.integrations.payments import require_payments_extra
from app.integrations.storage import check_at_startup, create_storage, require_storage_extra
from app.jobs.email import send_email
from app.jobs.exports import export_items, remove_expired_exports
from app.jobs.outbox import relay_outbox
from app.jobs.purge import purge_soft_deleted
from app.jobs.queue import JobQueue
from app.jobs.registry import JobContext, JobFunction, job
from app.jobs.serialization import job_deserializer, job_serializer
from app.jobs.webhooks import process_webhook_event

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

# Seconds between outbox relays (arq's cron counts in whole seconds; a divisor of 60).
RELAY_INTERVAL = 15


@job(name="relay_job_outbox", max_tries=1, timeout=120)
async def relay_job_outbox(ctx: JobContext) -> int:
    """Send the outbox's leftover jobs (see app/jobs/outbox.py); returns how many."""
    if ctx.jobs.queue is None:  # never in the worker, which always has a queue
        return 0
    return await relay_outbox(ctx.session_factory, ctx.jobs.queue)


# Every job the worker runs. Add yours here.
FUNCTIONS: tuple[JobFunction[..., Any], ...] = (export_items, send_email, process_webhook_event)
# (job, schedule) pairs; the schedule is in the worker's local time zone. arq runs each
# slot once however many workers there are.
CRON_JOBS: tuple[tuple[JobFunction[..., Any], dict[str, Any]], ...] = (
    (relay_job_outbox, {"second": set(range(0, 60, RELAY_INTERVAL)), "run_at_startup": True}),
    (purge_soft_deleted, {"hour": 3, "minute": 17}),
    (remove_expired_exports, {"minute": 41}),
)
HEALTH_CHECK_INTERVAL = 30
# Seconds running jobs get to finish after SIGTERM before they are cancelled (and
# retried later); below the 60 s grace period the Kubernetes worker pods allow.
JOB_COMPLETION_WAIT = 45


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from REDIS_URL."""
    if not settings.REDIS_URL:
        raise ConfigError("REDIS_URL must be set to run or check the job worker")
    redis = RedisSettings.from_dsn(settings.REDIS_URL)
    redis.conn_timeout = max(1, math.ceil(settings.REDIS_SOCKET_TIMEOUT))
    return redis


def health_check_key(settings: Settings, host: str | None = None) -> str:
    """The key this host's worker refreshes and `arq --check` on the same host reads.

    One key per host (pod, container): with arq's default, one key per queue, a stalled
    worker would pass its probe while any other replica is healthy, and every replica's
    probe would fail for a while when one of them stops (a stopping worker deletes it).
    """
    return f"{settings.JOBS_QUEUE_NAME}:health-check:{host or socket.gethostname()}"


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    setup_logging(settings.LOG_LEVEL, settings.log_format)
    init_error_reporting(settings, component="worker")
    # arq's CLI gave its logger a handler of its own; from here on its lines go through
    # ours, in the same format as the app's (and without printing each line twice).
    logging.getLogger("arq").handlers.clear()
    engine = create_engine(settings)
    redis = create_redis(settings)
    _start_tracing(ctx, settings, engine, redis)
    breaker = RedisBreaker(settings.REDIS_SOCKET_TIMEOUT)  # shared, as in the API
    ctx.update(
        engine=engine,
        session_factory=create_session_factory(engine),
        app_redis=redis,
        cache=Cache(redis, breaker=breaker),
        job_queue=JobQueue(ctx["redis"], queue_name=settings.JOBS_QUEUE_NAME, breaker=breaker),
    )
    ctx["mailer"] = await asyncio.to_thread(create_mailer, settings)  # may read a CA file
    ctx["storage"] = await create_storage(settings)
    await check_at_startup(ctx["storage"], settings.HEALTH_CHECK_TIMEOUT)
    if settings.WORKER_METRICS_PORT:
        ctx["metrics_server"] = await start_metrics_server(
            settings, settings.WORKER_METRICS_PORT, ctx["job_queue"], component="worker"
        )


def _start_tracing(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine, redis: Redis | None
) -> None:
    """Trace jobs, their SQL and the app's Redis client (not arq's own, whose polling
    would add a root span every half second). A provider already in `ctx` (tests) is
    used, and left to its owner."""
    provider = ctx.get("tracer_provider")
    if provider is None:
        provider = tracing.configure_tracing(settings, component="worker")
        ctx["owns_tracer_provider"] = provider is not None
    if provider is None:
        return
    ctx["tracer_provider"] = provider
    ctx["tracer"] = tracing.job_tracer(provider)
    tracing.instrument_engine(engine, provider)
    tracing.instrument_redis(redis, provider)


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("metrics_server") is not None:
        await ctx["metrics_server"].aclose()
    if ctx.get("app_redis") is not None:
        await ctx["app_redis"].aclose()
    if ctx.get("storage") is not None:
        await ctx["storage"].aclose()
    if ctx.get("mailer") is not None:
        await ctx["mailer"].aclose()
    if "engine" in ctx:
        await ctx["engine"].dispose()
    if ctx.get("owns_tracer_provider"):
        await asyncio.to_thread(ctx["tracer_provider"].shutdown)


def worker_options(
    settings: Settings,
    *,
    functions: Sequence[JobFunction[..., Any]] = FUNCTIONS,
    cron_jobs: Sequence[tuple[JobFunction[..., Any], dict[str, Any]]] = CRON_JOBS,
) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker` (which `WorkerSettings` also holds)."""
    return {
        "functions": [function.for_worker() for function in functions],
        "cron_jobs": [function.for_cron(**schedule) for function, schedule in cron_jobs],
        "queue_name": settings.JOBS_QUEUE_NAME,
        "redis_settings": redis_settings(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_timeout": settings.JOB_TIMEOUT,
        "max_tries": settings.JOB_MAX_TRIES,
        "keep_result": settings.JOB_KEEP_RESULT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "health_check_key": health_check_key(settings),
        "job_completion_wait": JOB_COMPLETION_WAIT,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "ctx": {"settings": settings},
    }


def build_worker_settings(settings: Settings) -> type:
    """The class arq's CLI reads its options from."""
    if settings.STORAGE_BACKEND == "s3":
        require_storage_extra()
    require_email_extra(settings)
    require_payments_extra(settings)
    return type("WorkerSettings", (), worker_options(settings))


def __getattr__(name: str) -> type:
    # arq's CLI does getattr(module, "WorkerSettings"): settings are read then, not on import.
    if name == "WorkerSettings":
        try:
            worker_settings = build_worker_settings(get_settings())
        except ConfigError as exc:  # a message for the operator, not a traceback
            raise SystemExit(f"cannot start the job worker: {exc}") from None
        globals()["WorkerSettings"] = worker_settings
        return worker_settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
