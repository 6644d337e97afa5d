"""The job outbox: a job enqueued in a transaction is stored by that transaction.

`Jobs.enqueue` adds an `OutboxJob` row next to the transaction's own writes. After
the commit the job is sent and its row deleted; when the send fails (Redis down, the
process killed between commit and send) the row stays, and `relay_outbox`, which the
worker runs every few seconds and at start-up, sends it later. A rollback drops both.
A job a client was told about is therefore a job that runs: at least once, since a
crash between a send and the row's delete sends it again (the queue ignores a job id
it still holds, but not one whose result has expired), so jobs must be safe to repeat.

Until it is sent, `job_info_for` reports the job to its owner as queued, whether or
not Redis is up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import REDIS_ERRORS
from app.core.db import SessionFactory, create_read_session_factory, session_context
from app.core.exceptions import ServiceUnavailableError
from app.jobs.queue import META_KWARG, JobInfo, JobQueue, JobState, PreparedJob
from app.models.base import utcnow
from app.models.job_outbox import OutboxJob

logger = logging.getLogger(__name__)

# Rows younger than this are left to the after-commit send of the process that wrote
# them (sending one twice is harmless, only wasted).
RELAY_MIN_AGE = 5.0
RELAY_BATCH_SIZE = 100


def outbox_row(job: PreparedJob) -> OutboxJob:
    """The row that keeps `job` (arguments, metadata, deferral) until it is sent."""
    payload = {"args": list(job.args), "kwargs": job.kwargs}
    return OutboxJob(id=job.id, function=job.function, payload=payload, defer_until=job.defer_until)


def _prepared(row: OutboxJob) -> PreparedJob:
    return PreparedJob(
        id=row.id,
        function=row.function,
        args=tuple(row.payload.get("args", ())),
        kwargs=dict(row.payload.get("kwargs", {})),
        defer_until=row.defer_until,
    )


def _engine(session: AsyncSession) -> AsyncEngine:
    bind = session.bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if bind is None:
        raise RuntimeError("the session is not bound to an engine")
    return bind


async def forget(session: AsyncSession, job_id: str) -> None:
    """Delete a sent job's row once `session` has committed, in a statement of its own
    (on PostgreSQL a single autocommit round trip). A failure is logged: the relay
    sends the job again, which the queue ignores while it holds the job."""
    factory = create_read_session_factory(_engine(session))
    try:
        async with session_context(factory) as autocommit:
            await autocommit.exec(delete(OutboxJob).where(col(OutboxJob.id) == job_id))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        logger.warning(
            "job %s was queued but its outbox row was not deleted (%s); the relay will clear it",
            job_id,
            type(exc).__name__,
            extra={"job_id": job_id},
        )


def _owned_by(job: PreparedJob, owner: str) -> bool:
    meta: Any = job.kwargs.get(META_KWARG)
    return isinstance(meta, dict) and meta.get("owner") is not None and meta["owner"] == owner


async def pending_info_for(session: AsyncSession, job_id: str, owner: str) -> JobInfo | None:
    """The job as `queued` while it waits in the outbox, if `owner` enqueued it."""
    row = await session.get(OutboxJob, job_id)
    if row is None or not _owned_by(job := _prepared(row), owner):
        return None
    meta = job.kwargs[META_KWARG]
    return JobInfo(
        id=row.id,
        function=row.function,
        state=JobState.QUEUED,
        owner=owner,
        request_id=meta.get("request_id"),
        attempts=0,
        enqueued_at=row.created_at,
    )


async def job_info_for(
    queue: JobQueue, session: AsyncSession, job_id: str, owner: str
) -> JobInfo | None:
    """The job as its owner sees it: the queue's record, or `queued` while the job is in
    the outbox (also while Redis is down); None if neither holds it for `owner`."""
    try:
        info = await queue.info_for(job_id, owner)
    except ServiceUnavailableError:
        pending = await pending_info_for(session, job_id, owner)
        if pending is None:
            raise
        return pending
    if info is not None:
        return info
    pending = await pending_info_for(session, job_id, owner)
    if pending is not None:
        return pending
    # Sent, and its row deleted, between the two reads: the queue has it now.
    return await queue.info_for(job_id, owner)


async def _claim(session: AsyncSession, min_age: float, batch_size: int) -> Sequence[OutboxJob]:
    # SKIP LOCKED (PostgreSQL; SQLite has no row locks) hands each row to one relay.
    cutoff = utcnow() - timedelta(seconds=min_age)
    statement = (
        select(OutboxJob)
        .where(col(OutboxJob.created_at) <= cutoff)
        .order_by(col(OutboxJob.created_at))
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    return (await session.exec(statement)).all()


async def _send_batch(session: AsyncSession, queue: JobQueue, rows: Sequence[OutboxJob]) -> int:
    """Send and delete each row, stopping at a Redis error (the rest wait for the next
    run); returns how many were sent."""
    for sent, row in enumerate(rows):
        try:
            await queue.send(_prepared(row))
        except REDIS_ERRORS as exc:
            row.attempts += 1
            logger.warning(
                "outbox relay: job %s (%s) not sent (%s, attempt %d); retrying on the next run",
                row.id,
                row.function,
                type(exc).__name__,
                row.attempts,
                extra={"job_id": row.id},
            )
            return sent
        await session.delete(row)
    return len(rows)


async def relay_outbox(
    factory: SessionFactory,
    queue: JobQueue,
    *,
    min_age: float = RELAY_MIN_AGE,
    batch_size: int = RELAY_BATCH_SIZE,
) -> int:
    """Send the outbox's jobs older than `min_age` seconds, oldest first, a batch per
    transaction, deleting each row once sent; returns how many were sent. Concurrent
    relays never send the same row (PostgreSQL); a deferred job keeps what remains of
    its delay."""
    sent = 0
    while True:
        async with session_context(factory) as session:
            rows = await _claim(session, min_age, batch_size)
            batch = await _send_batch(session, queue, rows)
        sent += batch
        if batch < batch_size:  # the outbox is drained, or Redis failed
            break
    if sent:
        logger.info("outbox relay sent %d jobs", sent)
    return sent
