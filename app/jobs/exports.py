"""Export jobs: items as CSV for the caller who asked, and clean-up of old files.

Files go to file storage (app/integrations/storage), so the API process that serves a
download need not share a disk with the worker that wrote it. Jobs are delivered at
least once (app/jobs/outbox.py), so both are safe to repeat: an export stores the
object named after its job id, replacing it whole (a repeat rewrites it from the
current rows, and arq never runs one job id twice at once); the clean-up only deletes
objects past their age, and one already gone is not an error.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from app.jobs.email import queue_email
from app.jobs.registry import JobContext, job
from app.models.base import utcnow
from app.models.item import ItemStatus
from app.resources import OwnerScope
from app.services.item_exports import export_items_csv, export_key, remove_old_exports
from app.services.items import ItemFilters

logger = logging.getLogger(__name__)


def _filters(values: dict[str, str | None]) -> ItemFilters:
    def when(name: str) -> datetime | None:
        value = values.get(name)
        return datetime.fromisoformat(value) if value else None

    status = values.get("status")
    return ItemFilters(
        status=ItemStatus(status) if status else None,
        q=values.get("q"),
        created_after=when("created_after"),
        created_before=when("created_before"),
    )


@job(name="export_items", timeout=900)
async def export_items(
    ctx: JobContext, scope: dict[str, str | None], filters: dict[str, str | None]
) -> dict[str, Any]:
    """Store the scope's items matching `filters` as CSV; the result says where to get it."""
    # Jobs queued before identities carried their issuer name a provider: their owner is
    # unknown by issuer, so only a tenant's export (which needs no owner) still matches.
    issuer = str(scope.get("issuer", ""))
    item_scope = OwnerScope(scope.get("tenant_id"), issuer, str(scope["subject"]))
    key = export_key(ctx.job_id)
    rows = await export_items_csv(ctx.session, item_scope, _filters(filters), ctx.storage, key)
    logger.info("exported %d items to %s", rows, key, extra={"job_id": ctx.job_id})
    download = f"{ctx.settings.API_V1_STR}/items/exports/{ctx.job_id}/download"
    email = scope.get("email")
    if email and ctx.mailer is not None:
        await _mail_export_ready(ctx, email, rows, ctx.settings.PUBLIC_BASE_URL + download)
    return {"rows": rows, "download_url": download}


def _duration(seconds: int) -> str:
    """`24 hours`, `90 minutes`, `1 minute`."""
    hours, minutes = divmod(seconds // 60, 60)
    count, unit = (hours, "hour") if hours and not minutes else (seconds // 60, "minute")
    return f"{count} {unit}{'' if count == 1 else 's'}"


async def _mail_export_ready(ctx: JobContext, email: str, rows: int, url: str) -> None:
    """Tell the caller by mail (sent once this job's transaction commits). A token's
    email that is no address costs the mail, not the export."""
    context = {
        "rows": rows,
        "download_url": url,
        "valid_for": _duration(ctx.settings.JOB_KEEP_RESULT),
    }
    try:
        # Keyed by the export: an export run twice mails twice under one Message-ID.
        await queue_email(
            ctx.jobs,
            to=email,
            template="export_ready",
            context=context,
            key=f"export-{ctx.job_id}",
        )
    except ValueError as exc:
        logger.warning("not mailing the export: %s", exc, extra={"job_id": ctx.job_id})


@job(name="remove_old_exports", max_tries=1)
async def remove_expired_exports(ctx: JobContext) -> int:
    """Delete exports older than JOB_KEEP_RESULT (their jobs' results are gone too)."""
    keep = timedelta(seconds=ctx.settings.JOB_KEEP_RESULT)
    removed = await remove_old_exports(ctx.storage, keep, utcnow())
    if removed:
        logger.info("removed %d expired export files", removed)
    return removed
