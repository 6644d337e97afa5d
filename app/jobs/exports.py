"""Export jobs: items as CSV for the caller who asked, and clean-up of old files.

Jobs are delivered at least once (app/jobs/outbox.py), so both are safe to repeat:
an export writes the file named after its job id, replacing it whole (a repeat
rewrites the same file from the current rows, and arq never runs one job id twice at
once); the clean-up only deletes files past their age, and a file already gone is
skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from app.jobs.registry import JobContext, job
from app.models.item import ItemStatus
from app.resources import OwnerScope
from app.services.item_exports import export_items_csv, export_path, remove_old_exports
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
    """Write the scope's items matching `filters` to EXPORT_DIR; the result says where."""
    # Jobs queued before identities carried their issuer name a provider: their owner is
    # unknown by issuer, so only a tenant's export (which needs no owner) still matches.
    issuer = str(scope.get("issuer", ""))
    item_scope = OwnerScope(scope.get("tenant_id"), issuer, str(scope["subject"]))
    path = export_path(ctx.settings.EXPORT_DIR, ctx.job_id)
    rows = await export_items_csv(ctx.session, item_scope, _filters(filters), path)
    logger.info("exported %d items to %s", rows, path.name, extra={"job_id": ctx.job_id})
    download = f"{ctx.settings.API_V1_STR}/items/exports/{ctx.job_id}/download"
    return {"rows": rows, "download_url": download}


@job(name="remove_old_exports", max_tries=1)
async def remove_expired_exports(ctx: JobContext) -> int:
    """Delete export files older than JOB_KEEP_RESULT (their jobs' results are gone too)."""
    settings = ctx.settings
    removed = await asyncio.to_thread(
        remove_old_exports, settings.EXPORT_DIR, settings.JOB_KEEP_RESULT, time.time()
    )
    if removed:
        logger.info("removed %d expired export files", removed)
    return removed
