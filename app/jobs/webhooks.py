"""The `process_webhook_event` job: run a stored webhook event through its handler.

Queued by the webhook endpoint in the transaction that stored the event. The handler's
writes and the event's `processed` status commit together. A failing handler is rolled
back, its error and the try are recorded on the event in a transaction of their own,
and the job is retried with back-off; after the last try the event is `failed`, to be
run again with `make webhooks-replay` once the cause is fixed. A run the queue cancels
(over `JOB_TIMEOUT`, or the worker stopping) records why and leaves the event
`received`: `make webhooks-replay ARGS=--stuck` finds it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from app.core.db import session_context
from app.jobs.registry import JobContext, job
from app.services import subscriptions  # noqa: F401  (registers the reference handler)
from app.services.webhooks import process_event, record_failure

logger = logging.getLogger(__name__)


@job(name="process_webhook_event")
async def process_webhook_event(ctx: JobContext, event_row_id: str) -> str:
    """Process one stored event; returns its status (`processed`, `ignored`, or the
    status another job already gave it)."""
    row_id = uuid.UUID(event_row_id)
    try:
        status = await process_event(ctx.session, row_id)
        # Committed here, not after the return: a failed commit is a failed try too.
        await ctx.session.commit()
    except BaseException as exc:
        await ctx.session.rollback()  # the handler's writes go; nothing stays locked
        # A cancelled run (JOB_TIMEOUT, or the worker stopping) is not retried by the
        # queue: the event stays `received`, with the reason, for `--stuck` replays.
        cancelled = isinstance(exc, asyncio.CancelledError)
        limit = process_webhook_event.max_tries or ctx.settings.JOB_MAX_TRIES
        final = not cancelled and ctx.job_try >= limit
        error = (
            "cancelled (timed out, or the worker stopped)"
            if cancelled
            else (f"{type(exc).__name__}: {exc}")
        )
        await asyncio.shield(_record_failure(ctx, row_id, error, final=final))
        if final:
            logger.error(
                "webhook event %s failed for good after %d tries: %s",
                event_row_id,
                ctx.job_try,
                error,
                extra={"job_id": ctx.job_id},
            )
        raise
    return status.value


async def _record_failure(ctx: JobContext, row_id: uuid.UUID, error: str, *, final: bool) -> None:
    async with session_context(ctx.session_factory) as session:
        await record_failure(session, row_id, error, final=final)
