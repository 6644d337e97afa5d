"""CSV exports of items: the rows a caller's list would show, written to file storage."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from app.integrations.storage import Storage
from app.models.item import Item
from app.resources import OwnerScope
from app.services.items import ItemFilters, iter_items

COLUMNS = (
    "id", "title", "description", "status", "tags", "tenant_id", "owner_id", "version",
    "created_at", "updated_at",
)  # fmt: skip
CONTENT_TYPE = "text/csv; charset=utf-8"
PREFIX = "exports/"
# Spreadsheet programs run cells starting with these as formulas; prefixing a quote
# keeps a hostile title from executing anything when the file is opened.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _row(item: Item) -> list[str]:
    values = item.model_dump()
    values["tags"] = ";".join(item.tags)
    values["status"] = item.status.value
    values["created_at"] = item.created_at.isoformat()
    values["updated_at"] = item.updated_at.isoformat()
    return [_cell(values[column]) for column in COLUMNS]


def export_key(job_id: str) -> str:
    """Where the export of job `job_id` is stored (job ids are the queue's own hex ids)."""
    return f"{PREFIX}items-{job_id}.csv"


def _csv(rows: Sequence[Sequence[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


async def export_items_csv(
    session: AsyncSession, scope: OwnerScope, filters: ItemFilters, storage: Storage, key: str
) -> int:
    """Store every matching item as CSV under `key`, streamed batch by batch; returns the
    number of rows. All or nothing: a failed export stores no partial file."""
    rows = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal rows
        yield _csv([COLUMNS])
        async for batch in iter_items(session, scope, filters):
            yield _csv([_row(item) for item in batch])
            rows += len(batch)

    await storage.put(key, chunks(), content_type=CONTENT_TYPE)
    return rows


async def remove_old_exports(storage: Storage, older_than: timedelta, now: datetime) -> int:
    """Delete the exports last written before `now - older_than`; returns how many."""
    removed = 0
    async for info in storage.list(PREFIX):
        if info.modified_at < now - older_than:
            await storage.delete(info.key)
            removed += 1
    return removed
