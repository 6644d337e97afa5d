"""Job functions: the `@job` decorator and the `JobContext` every job receives.

A job is `async def name(ctx: JobContext, ...)` returning JSON (or None), decorated
with `@job()` and listed in `FUNCTIONS` in `app/jobs/worker.py`. Around each run the
wrapper

* puts the id of the request that enqueued the job back into `request_id_var`, so the
  job's log lines carry it;
* when tracing is on, runs the job in a `job <name>` span joined to the trace of the
  request that enqueued it (its log lines carry that trace id too);
* opens `ctx.session` with `session_context`: committed when the job returns, rolled
  back when it raises (jobs needing several transactions use `ctx.session_factory`);
* turns a failure into a retry after an exponential back-off
  (`JOB_RETRY_DELAY` x 1, 2, 4, ...) until `max_tries`; `PermanentJobError` fails at once.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from arq.cron import CronJob, cron
from arq.worker import Function, Retry, func
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import metrics
from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import SessionFactory, session_context
from app.core.error_reporting import report_exception
from app.core.logging import request_id_var
from app.core.tracing import job_span
from app.integrations.email import Mailer
from app.integrations.storage import Storage
from app.jobs.enqueue import Jobs
from app.jobs.queue import META_KWARG
from app.jobs.serialization import JobPayloadError, check_payload

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
MAX_RETRY_DELAY = 600.0


class PermanentJobError(Exception):
    """Raise from a job to fail it without further tries (bad input, missing row, ...)."""


def retry_delay(job_try: int, base: float, cap: float = MAX_RETRY_DELAY) -> float:
    """Seconds to wait after try `job_try` fails: base, 2 x base, 4 x base, ..., at most cap."""
    return min(cap, base * 2.0 ** min(job_try - 1, 64))


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: str
    job_try: int
    request_id: str | None
    settings: Settings
    session: AsyncSession
    session_factory: SessionFactory
    cache: Cache
    jobs: Jobs  # follow-up jobs leave after `session` commits
    storage: Storage
    mailer: Mailer | None  # None with EMAIL_BACKEND=none


class JobFunction(Generic[P, R]):
    """A job function with its queue options; calling it runs the function directly."""

    def __init__(
        self,
        function: Callable[Concatenate[JobContext, P], Awaitable[R]],
        *,
        name: str,
        timeout: float | None,
        max_tries: int | None,
        keep_result: float | None,
    ) -> None:
        self.function = function
        self.name = name
        self.timeout = timeout
        self.max_tries = max_tries
        self.keep_result = keep_result
        self._signature = inspect.signature(function)

    async def __call__(self, ctx: JobContext, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.function(ctx, *args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise `JobPayloadError` if the function would reject these arguments."""
        try:
            self._signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise JobPayloadError(f"job {self.name!r}: {exc}") from None
        check_payload(self.name, args, kwargs)

    def for_worker(self) -> Function:
        return func(
            self.run,
            name=self.name,
            timeout=self.timeout,
            max_tries=self.max_tries,
            keep_result=self.keep_result,
        )

    def for_cron(self, **schedule: Any) -> CronJob:
        """A cron entry (`hour=3, minute=17`, ...); arq's `unique` keeps it to one run per slot."""
        return cron(
            self.run,
            name=self.name,
            timeout=self.timeout,
            max_tries=self.max_tries or 1,
            keep_result=self.keep_result or 0,
            **schedule,
        )

    async def run(self, ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        """What the worker calls: arq's context in, the job's result out."""
        meta = kwargs.pop(META_KWARG, None)
        meta = meta if isinstance(meta, dict) else {}
        request_id = meta.get("request_id")
        token = request_id_var.set(request_id if isinstance(request_id, str) else None)
        try:
            tracer = ctx.get("tracer")
            if tracer is None:
                return await self._attempt(ctx, args, kwargs)
            attributes = {
                "messaging.system": "arq",
                "messaging.operation.type": "process",
                "messaging.destination.name": ctx["settings"].JOBS_QUEUE_NAME,
                "messaging.message.id": ctx["job_id"],
                "job.try": ctx.get("job_try", 1),
            }
            with job_span(tracer, self.name, meta.get("trace"), attributes):
                return await self._attempt(ctx, args, kwargs)
        finally:
            request_id_var.reset(token)

    async def _attempt(self, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        metrics.JOBS_STARTED.labels(self.name).inc()
        started = time.perf_counter()
        try:
            result = await self._try(ctx, args, kwargs)
        except Retry:
            metrics.JOBS_RETRIED.labels(self.name).inc()
            raise
        except BaseException:
            metrics.JOBS_FAILED.labels(self.name).inc()
            raise
        finally:
            metrics.JOB_DURATION.labels(self.name).observe(time.perf_counter() - started)
        metrics.JOBS_COMPLETED.labels(self.name).inc()
        return result

    async def _try(self, ctx: dict[str, Any], args: tuple[Any, ...], kwargs: Any) -> Any:
        settings: Settings = ctx["settings"]
        job_try: int = ctx.get("job_try", 1)
        try:
            async with session_context(ctx["session_factory"]) as session:
                job_ctx = JobContext(
                    job_id=ctx["job_id"],
                    job_try=job_try,
                    request_id=request_id_var.get(),
                    settings=settings,
                    session=session,
                    session_factory=ctx["session_factory"],
                    cache=ctx["cache"],
                    jobs=Jobs(ctx["job_queue"], session),
                    storage=ctx["storage"],
                    mailer=ctx.get("mailer"),
                )
                return await self.function(job_ctx, *args, **kwargs)
        except (Retry, PermanentJobError):
            raise
        except Exception as exc:
            max_tries = self.max_tries or settings.JOB_MAX_TRIES
            report_exception(
                exc,
                request_id=request_id_var.get(),
                level="error" if job_try >= max_tries else "warning",
                job_id=ctx["job_id"],
                job_function=self.name,
                job_try=str(job_try),
            )
            if job_try >= max_tries:
                raise
            delay = retry_delay(job_try, settings.JOB_RETRY_DELAY)
            logger.warning(
                "job %s (%s) try %d of %d failed (%s); retrying in %.2fs",
                ctx["job_id"],
                self.name,
                job_try,
                max_tries,
                type(exc).__name__,
                delay,
                extra={"job_id": ctx["job_id"]},
            )
            raise Retry(defer=delay) from exc


def job(
    name: str | None = None,
    *,
    timeout: float | None = None,
    max_tries: int | None = None,
    keep_result: float | None = None,
) -> Callable[[Callable[Concatenate[JobContext, P], Awaitable[R]]], JobFunction[P, R]]:
    """Make `async def f(ctx: JobContext, ...)` a job; options default to the JOB_* settings."""

    def decorate(function: Callable[Concatenate[JobContext, P], Awaitable[R]]) -> JobFunction[P, R]:
        return JobFunction(
            function,
            name=name or function.__name__,
            timeout=timeout,
            max_tries=max_tries,
            keep_result=keep_result,
        )

    return decorate
