"""The job queue as the application sees it: prepare, send and report on jobs.

`JobQueue` wraps arq's Redis client; with `worker.py` it is the only code that knows
arq, so another queue could replace it here. Each job carries a small metadata
record next to its arguments (the request id that enqueued it, its owner and, when
tracing is on, the trace context it was enqueued in: W3C `traceparent`), which
Redis keeps exactly as long as the job and its result, so "who may see this job"
never outlives or expires before the job itself.

Jobs enqueued in a transaction wait in the database outbox (`outbox.py`) until they
are sent, so `send_after_commit` only logs a failure: the relay sends the job later.
Sending a job id the queue still holds (queued, running or with a result) does nothing.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import DeserializationError, JobDef, JobResult, deserialize_job, deserialize_result
from redis.asyncio import Redis

from app.core.cache import REDIS_ERRORS, RedisBreaker, RedisSkippedError
from app.core.exceptions import ServiceUnavailableError
from app.core.logging import request_id_var
from app.core.tracing import trace_carrier
from app.jobs.serialization import JobError, job_deserializer, job_serializer

if TYPE_CHECKING:
    from app.jobs.registry import JobFunction

logger = logging.getLogger(__name__)

META_KWARG = "_meta"
UNAVAILABLE_MESSAGE = "Background jobs are unavailable right now; try again shortly."
_JOB_ID = re.compile(r"[A-Za-z0-9:._\-]{1,128}")


class JobState(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A checked job, ready to be sent; `defer_until` holds it back until then."""

    id: str
    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    defer_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job's state; `result` when complete, `error` (the exception type) when failed."""

    id: str
    function: str
    state: JobState
    owner: str | None
    request_id: str | None
    attempts: int
    enqueued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None


def _meta(definition: JobDef) -> dict[str, Any]:
    meta = definition.kwargs.get(META_KWARG)
    return meta if isinstance(meta, dict) else {}


def _from_result(job_id: str, result: JobResult) -> JobInfo:
    meta = _meta(result)
    error = None
    if not result.success:
        outcome = result.result
        error = outcome.type_name if isinstance(outcome, JobError) else str(outcome)
    return JobInfo(
        id=job_id,
        function=result.function,
        state=JobState.COMPLETE if result.success else JobState.FAILED,
        owner=meta.get("owner"),
        request_id=meta.get("request_id"),
        attempts=result.job_try or 1,
        enqueued_at=result.enqueue_time,
        started_at=result.start_time,
        finished_at=result.finish_time,
        result=result.result if result.success else None,
        error=error,
    )


def _from_definition(job_id: str, definition: JobDef, running: bool, tries: int) -> JobInfo:
    meta = _meta(definition)
    return JobInfo(
        id=job_id,
        function=definition.function,
        state=JobState.IN_PROGRESS if running else JobState.QUEUED,
        owner=meta.get("owner"),
        request_id=meta.get("request_id"),
        # arq marks a job running a moment before it counts the try: a running job is
        # on its first try at least.
        attempts=max(tries, 1) if running else tries,
        enqueued_at=definition.enqueue_time,
    )


class JobQueue:
    """Sends jobs to, and reads their state from, one named queue."""

    def __init__(
        self, redis: ArqRedis, *, queue_name: str, breaker: RedisBreaker | None = None
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.breaker = breaker or RedisBreaker.for_client(redis)

    @classmethod
    def over(
        cls, redis: Redis, *, queue_name: str, breaker: RedisBreaker | None = None
    ) -> JobQueue:
        """A queue sharing `redis`'s connection pool (and its timeouts, and `breaker`, the
        process's Redis circuit breaker); opens nothing."""
        arq_redis = ArqRedis(
            redis.connection_pool,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            default_queue_name=queue_name,
        )
        return cls(arq_redis, queue_name=queue_name, breaker=breaker)

    def prepare(
        self,
        function: JobFunction[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        owner: str | None = None,
        defer_by: float | None = None,
    ) -> PreparedJob:
        """Check the arguments (`JobPayloadError` if they cannot be sent) and give the job an id."""
        function.check_arguments(args, kwargs)
        meta: dict[str, Any] = {"request_id": request_id_var.get(), "owner": owner}
        if (carrier := trace_carrier()) is not None:
            meta["trace"] = carrier  # the outbox stores it with the job, so a relay keeps it
        return PreparedJob(
            id=uuid.uuid4().hex,
            function=function.name,
            args=args,
            kwargs={**kwargs, META_KWARG: meta},
            defer_until=datetime.now(UTC) + timedelta(seconds=defer_by) if defer_by else None,
        )

    async def send(self, job: PreparedJob) -> None:
        """Put the job on the queue now (raises on Redis errors); a job id the queue still
        holds is left alone, so sending a job twice runs it once."""
        # A deferral already past (the job waited out an outage) runs the job now.
        due = job.defer_until if job.defer_until and job.defer_until > datetime.now(UTC) else None
        queued = await self.breaker.call(
            lambda: self.redis.enqueue_job(
                job.function, *job.args, _job_id=job.id, _defer_until=due, **job.kwargs
            )
        )
        if queued is None:
            logger.info("job %s (%s) is already queued or done", job.id, job.function)
            return
        logger.info("job %s (%s) queued", job.id, job.function, extra={"job_id": job.id})

    async def send_after_commit(self, job: PreparedJob) -> bool:
        """`send`, for after a commit: True once sent; a failure is logged with the job id,
        never raised. While the Redis breaker is open it is not tried (no timeout per
        request): the job waits in the outbox for the relay either way."""
        try:
            await self.send(job)
        except REDIS_ERRORS as exc:
            reason = "Redis is unavailable" if isinstance(exc, RedisSkippedError) else repr(exc)
        else:
            return True
        logger.warning(
            "job %s (%s) was committed but not queued (%s); the outbox relay will send it",
            job.id,
            job.function,
            reason,
            extra={"job_id": job.id},
        )
        return False

    async def enqueue(
        self,
        function: JobFunction[..., Any],
        /,
        *args: Any,
        _owner: str | None = None,
        _defer_by: float | None = None,
        **kwargs: Any,
    ) -> str:
        """Send a job at once, outside any transaction (scripts, tests); returns its id."""
        job = self.prepare(function, args, kwargs, owner=_owner, defer_by=_defer_by)
        try:
            await self.send(job)
        except REDIS_ERRORS:
            raise ServiceUnavailableError(UNAVAILABLE_MESSAGE) from None
        return job.id

    async def depth(self) -> int:
        """Jobs waiting in the queue (due or deferred): one ZCARD."""
        count: int = await self.breaker.call(lambda: self.redis.zcard(self.queue_name))
        return count

    async def info(self, job_id: str) -> JobInfo | None:
        """The job's state, or None when no such job is known (or its result has expired)."""
        if not _JOB_ID.fullmatch(job_id):
            return None

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(result_key_prefix + job_id)
                pipe.get(job_key_prefix + job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.get(retry_key_prefix + job_id)
                return await pipe.execute()

        try:
            result, definition, running, tries = await self.breaker.call(read)
        except REDIS_ERRORS:
            raise ServiceUnavailableError(UNAVAILABLE_MESSAGE) from None
        try:
            if result:
                finished = deserialize_result(result, deserializer=job_deserializer)
                return _from_result(job_id, finished)
            if definition:
                parsed = deserialize_job(definition, deserializer=job_deserializer)
                return _from_definition(job_id, parsed, bool(running), int(tries or 0))
        except DeserializationError:
            logger.warning("job %s has a record this application cannot read", job_id)
        return None

    async def info_for(self, job_id: str, owner: str) -> JobInfo | None:
        """`info`, but None unless the job was enqueued with `_owner=owner`."""
        info = await self.info(job_id)
        if info is None or info.owner is None or info.owner != owner:
            return None
        return info
