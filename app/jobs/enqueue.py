"""Enqueueing from requests and from jobs: a job leaves only once its transaction commits.

`JobsDep` gives a handler a `Jobs` bound to the request's session. `enqueue` checks
the arguments and that the queue is reachable at once (a 503 then rolls the request
back), and sends the job after the commit; a rollback drops it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.db import SessionDep, on_commit
from app.core.exceptions import ServiceUnavailableError
from app.jobs.queue import UNAVAILABLE_MESSAGE, JobQueue

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
        """Schedule `function(*args, **kwargs)` to be sent after the commit; returns the job id.

        `_owner` records who may later see the job (`JobQueue.info_for`). Raises
        `JobPayloadError` for arguments the job cannot receive and
        `ServiceUnavailableError` (503) when the queue is unreachable.
        """
        if self.queue is None:
            raise ServiceUnavailableError(UNAVAILABLE_MESSAGE)
        job = self.queue.prepare(function, args, kwargs, owner=_owner, defer_by=_defer_by)
        await self.queue.ensure_available()
        on_commit(self.session, partial(self.queue.send_after_commit, job))
        return job.id


async def get_jobs(request: Request, session: SessionDep) -> Jobs:
    return Jobs(request.state.jobs, session)


async def get_job_queue(request: Request) -> JobQueue:
    queue: JobQueue | None = request.state.jobs
    if queue is None:
        raise ServiceUnavailableError(UNAVAILABLE_MESSAGE)
    return queue


JobsDep = Annotated[Jobs, Depends(get_jobs)]
JobQueueDep = Annotated[JobQueue, Depends(get_job_queue)]
