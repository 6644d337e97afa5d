"""The `send_email` job: render a templated mail and hand it to the transport.

Enqueue it with `queue_email(jobs, to=..., template=..., context=...)`, which checks
the address and the template at once (a typo fails the request, not a job hours
later) and sends the job after the caller's transaction commits. The worker renders
and sends; temporary failures (connection refused, a timeout, a 4xx answer) are
retried with the job back-off, permanent ones (a 5xx answer, a refused recipient, an
unrenderable message) fail the job at once and are logged with its id. The
`Message-ID` is the job id's, the same on every try, so a message sent twice (at-least-
once delivery) can be dropped by the receiver.
"""

from __future__ import annotations

import logging
from typing import Any

from app.integrations.email import PermanentMailError
from app.jobs.enqueue import Jobs
from app.jobs.registry import JobContext, PermanentJobError, job

logger = logging.getLogger(__name__)


@job(name="send_email")
async def send_email(
    ctx: JobContext, to: str, template: str, context: dict[str, Any], key: str | None = None
) -> dict[str, str]:
    """Send the `template` mail to `to`; the result holds its Message-ID, made from
    `key` (or this job's id): the same for every try, and for every job given the key."""
    from app.integrations.email.messages import message_id, render_email

    if ctx.mailer is None:
        logger.info("EMAIL_BACKEND=none: the %r email is not sent", template)
        return {"skipped": "EMAIL_BACKEND=none"}
    msgid = message_id(key or ctx.job_id, ctx.settings.EMAIL_FROM)
    try:
        message = render_email(ctx.settings, to=to, template=template, context=context, msgid=msgid)
        await ctx.mailer.send(message)
    except PermanentMailError as exc:
        logger.error(
            "the %r email (job %s) cannot be sent: %s",
            template,
            ctx.job_id,
            exc,
            extra={"job_id": ctx.job_id},
        )
        raise PermanentJobError(str(exc)) from exc
    # A TemporaryMailError propagates: the job is retried after its back-off.
    logger.info("sent the %r email %s", template, msgid, extra={"job_id": ctx.job_id})
    return {"message_id": msgid}


async def queue_email(
    jobs: Jobs, *, to: str, template: str, context: dict[str, Any], key: str | None = None
) -> str:
    """Enqueue `send_email` (sent after the current transaction commits); ValueError
    for an address or template that could never be sent. Returns the job id.

    `key` names the mail for its `Message-ID` when the code queueing it may itself run
    twice (a job retried after its commit): both copies then carry the same id."""
    from app.integrations.email.messages import check_address, check_template

    address, name = check_address(to), check_template(template)
    return await jobs.enqueue(send_email, address, name, context, key)
