"""Enqueueing from requests and from jobs: a job leaves only once its transaction commits.

`JobsDep` gives a handler a `Jobs` bound to the request's session (`ctx.jobs` is the
same for a job). `enqueue` checks the arguments and records the job in the outbox, in
that transaction; after the commit the job is sent and its row deleted, and if Redis
is down then, the outbox relay sends it later (`outbox.py`). A rollback drops both. So
a job whose id a client was given runs, at least once, even across a Redis outage; a
handler that writes nothing and needs Redis to answer now uses `JobQueue.enqueue`.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import ReadSessionDep, SessionDep, on_commit
from app.core.exceptions import ServiceUnavailableError
from app.jobs.outbox import forget, job_info_for, outbox_row
from app.jobs.queue import UNAVAILABLE_MESSAGE, JobInfo, JobQueue, PreparedJob

if TYPE_CHECKING:
    from app.jobs.registry import JobFunction


class Jobs:
    """Enqueues jobs on behalf of one session's transaction."""

    def __init__(self, queue: JobQueue | None, session: AsyncSession) -> None:
        self.queue = queue
        self.session = session

    async def enqueue(
        self,
        function: JobFunction[..., Any],
        /,
        *args: Any,
        _owner: str | None = None,
        _defer_by: float | None = None,
        **kwargs: Any,
    ) -> str:
        """Store `function(*args, **kwargs)` in the outbox, to be sent after the commit;
        returns the job id.

        `_owner` records who may later see the job (`job_info_for`). Raises
        `JobPayloadError` for arguments the job cannot receive and
        `ServiceUnavailableError` (503) when no queue is configured (REDIS_URL empty).
        Redis being down is no error: the relay sends the job once it is back.
        """
        if self.queue is None:
            raise ServiceUnavailableError(UNAVAILABLE_MESSAGE)
        job = self.queue.prepare(function, args, kwargs, owner=_owner, defer_by=_defer_by)
        self.session.add(outbox_row(job))
        on_commit(self.session, partial(self._send, self.queue, job))
        return job.id

    async def _send(self, queue: JobQueue, job: PreparedJob) -> None:
        if await queue.send_after_commit(job):
            await forget(self.session, job.id)


async def get_jobs(request: Request, session: SessionDep) -> Jobs:
    return Jobs(request.state.jobs, session)


class JobStatuses:
    """What a handler may read about jobs: their state, as their owner sees it. (Handlers
    enqueue only through `JobsDep`, after their commit; `JobQueue` itself stays with the
    outbox relay, scripts and tests.)"""

    def __init__(self, queue: JobQueue, session: AsyncSession) -> None:
        self._queue = queue
        self._session = session

    async def for_owner(self, job_id: str, owner: str) -> JobInfo | None:
        """The job if `owner` enqueued it: `queued` while it still waits in the outbox
        (also while Redis is down), else the queue's record; None otherwise."""
        return await job_info_for(self._queue, self._session, job_id, owner)


async def get_job_statuses(request: Request, session: ReadSessionDep) -> JobStatuses:
    queue: JobQueue | None = request.state.jobs
    if queue is None:
        raise ServiceUnavailableError(UNAVAILABLE_MESSAGE)
    return JobStatuses(queue, session)


JobsDep = Annotated[Jobs, Depends(get_jobs)]
JobStatusDep = Annotated[JobStatuses, Depends(get_job_statuses)]
