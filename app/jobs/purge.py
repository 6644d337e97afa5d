"""The purge cron: hard-delete rows soft-deleted more than SOFT_DELETE_RETENTION_DAYS ago
(and the attachment files of items among them), and idempotency records older than
their 24 h lifetime.

Only tables whose model is decorated with `@purgeable` (app/models/base.py) are
purged of soft-deleted rows. Rows go in batches, each in its own short transaction,
so a large backlog never holds locks for long.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, select, tuple_

from app.core.db import SessionFactory, session_context
from app.integrations.storage import StorageUnavailableError
from app.jobs.registry import JobContext, job
from app.models.attachment import ItemAttachment
from app.models.base import purgeable_models, utcnow
from app.models.idempotency import IdempotencyRecord
from app.models.item import Item
from app.services.attachments import purge_attachments
from app.services.idempotency import expiry_cutoff

logger = logging.getLogger(__name__)

BATCH_SIZE = 1000


async def _delete_in_batches(
    factory: SessionFactory, table: Table, condition: ColumnElement[bool], batch_size: int
) -> int:
    """Delete every row of `table` matching `condition`, `batch_size` rows per
    transaction; returns how many went."""
    keys = list(table.primary_key.columns)
    expired = select(*keys).where(condition).limit(batch_size)
    target = keys[0] if len(keys) == 1 else tuple_(*keys)
    total = 0
    while True:
        async with session_context(factory) as session:
            result = await session.exec(delete(table).where(target.in_(expired)))
        total += result.rowcount
        if result.rowcount < batch_size:
            return total


async def purge_table(
    factory: SessionFactory,
    table: Table,
    *,
    deleted_before: datetime,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete every row of `table` whose `deleted_at` is before `deleted_before`; returns
    how many went."""
    return await _delete_in_batches(factory, table, table.c.deleted_at < deleted_before, batch_size)


async def purge_idempotency_records(
    factory: SessionFactory, *, created_before: datetime, batch_size: int = BATCH_SIZE
) -> int:
    """Delete the idempotency records created before `created_before` (expired ones,
    which are never replayed); returns how many went."""
    table: Table = IdempotencyRecord.__table__  # type: ignore[attr-defined]
    return await _delete_in_batches(factory, table, table.c.created_at < created_before, batch_size)


@job(name="purge_soft_deleted", max_tries=3, timeout=3600)
async def purge_soft_deleted(ctx: JobContext) -> dict[str, Any]:
    """Purge every `@purgeable` model and the expired idempotency records; returns the
    number of rows deleted per table."""
    import app.models  # noqa: F401  (every model registers itself on import)

    cutoff = utcnow() - timedelta(days=ctx.settings.SOFT_DELETE_RETENTION_DAYS)
    counts: dict[str, Any] = {}
    # Files first: once their items are gone, nothing would say which files to delete.
    # With storage down, items wait for the next run; everything else is purged.
    held_back: set[str] = set()
    try:
        attachments = await purge_attachments(
            ctx.session_factory, ctx.storage, deleted_before=cutoff
        )
    except StorageUnavailableError as exc:
        logger.warning("not purging items this run: their files cannot be deleted (%s)", exc.reason)
        held_back.add(Item.__tablename__)
    else:
        counts[ItemAttachment.__tablename__] = attachments
        logger.info("purged %d attachments of soft-deleted items", attachments)
    for model in purgeable_models():
        table: Table = model.__table__  # type: ignore[attr-defined]
        if table.name in held_back:
            continue
        counts[table.name] = await purge_table(ctx.session_factory, table, deleted_before=cutoff)
        logger.info("purged %d soft-deleted rows from %s", counts[table.name], table.name)
    purged = await purge_idempotency_records(ctx.session_factory, created_before=expiry_cutoff())
    counts[IdempotencyRecord.__tablename__] = purged
    logger.info("purged %d expired idempotency records", purged)
    return counts
