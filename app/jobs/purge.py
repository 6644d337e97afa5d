"""The purge cron: hard-delete rows soft-deleted more than SOFT_DELETE_RETENTION_DAYS ago.

Only tables whose model is decorated with `@purgeable` (app/models/base.py) are
purged. Rows go in batches, each in its own short transaction, so a large backlog
never holds locks for long.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, select

from app.core.db import SessionFactory, session_context
from app.jobs.registry import JobContext, job
from app.models.base import purgeable_models, utcnow

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000


async def purge_table(
    factory: SessionFactory,
    table: Table,
    *,
    deleted_before: datetime,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete every row of `table` whose `deleted_at` is before `deleted_before`; returns
    how many went."""
    (key,) = table.primary_key.columns
    expired = select(key).where(table.c.deleted_at < deleted_before).limit(batch_size)
    total = 0
    while True:
        async with session_context(factory) as session:
            result = await session.exec(delete(table).where(key.in_(expired)))
        total += result.rowcount
        if result.rowcount < batch_size:
            return total


@job(name="purge_soft_deleted", max_tries=3, timeout=3600)
async def purge_soft_deleted(ctx: JobContext) -> dict[str, Any]:
    """Purge every `@purgeable` model; returns the number of rows deleted per table."""
    import app.models  # noqa: F401  (every model registers itself on import)

    cutoff = utcnow() - timedelta(days=ctx.settings.SOFT_DELETE_RETENTION_DAYS)
    counts: dict[str, Any] = {}
    for model in purgeable_models():
        table: Table = model.__table__  # type: ignore[attr-defined]
        counts[table.name] = await purge_table(ctx.session_factory, table, deleted_before=cutoff)
        logger.info("purged %d soft-deleted rows from %s", counts[table.name], table.name)
    return counts
