"""CSV exports of items: the rows a caller's list would show, written to a file."""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path
from typing import TextIO

from sqlmodel.ext.asyncio.session import AsyncSession

from app.models.item import Item
from app.resources import OwnerScope
from app.services.items import ItemFilters, iter_items

COLUMNS = (
    "id", "title", "description", "status", "tags", "tenant_id", "owner_id", "version",
    "created_at", "updated_at",
)  # fmt: skip
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


def export_path(directory: Path, job_id: str) -> Path:
    return directory / f"items-{job_id}.csv"


async def export_items_csv(
    session: AsyncSession, scope: OwnerScope, filters: ItemFilters, path: Path
) -> int:
    """Write every matching item to `path` atomically: readers never see half a file,
    and a failed export leaves no partial file behind."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    file = await asyncio.to_thread(partial.open, "w", newline="", encoding="utf-8")
    try:
        rows = await _write_rows(session, scope, filters, file)
        await asyncio.to_thread(file.close)
        await asyncio.to_thread(os.replace, partial, path)
    except BaseException:
        await asyncio.to_thread(_discard, file, partial)
        raise
    return rows


async def _write_rows(
    session: AsyncSession, scope: OwnerScope, filters: ItemFilters, file: TextIO
) -> int:
    writer = csv.writer(file)
    await asyncio.to_thread(writer.writerow, COLUMNS)
    rows = 0
    async for batch in iter_items(session, scope, filters):
        await asyncio.to_thread(writer.writerows, [_row(item) for item in batch])
        rows += len(batch)
    return rows


def _discard(file: TextIO, partial: Path) -> None:
    file.close()
    partial.unlink(missing_ok=True)


def remove_old_exports(directory: Path, older_than: float, now: float) -> int:
    """Delete export files last written before `now - older_than`; returns how many."""
    removed = 0
    if not directory.is_dir():
        return 0
    for path in directory.glob("items-*.csv*"):
        try:
            if path.stat().st_mtime < now - older_than:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
