"""Item attachments: files stored beside an item, reached only through the item.

Every operation first finds the item in the caller's scope, so an attachment of an
item the caller cannot see does not exist for them (404). The bytes go to file
storage before the row is written, under a key made of the two ids; a row that is
not written takes its file with it, and a deletion removes the file once committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import datetime

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.db import SessionFactory, on_commit, session_context
from app.core.exceptions import ConflictError, NotFoundError
from app.integrations.storage import Storage, StorageUnavailableError
from app.models.attachment import ItemAttachment, attachment_key
from app.models.base import uuid7
from app.models.item import Item
from app.resources import OwnerScope
from app.resources.store import Database, connection_of
from app.schemas.attachment import AttachmentRead
from app.services.items import items
from app.services.uploads import checked_upload, safe_filename

logger = logging.getLogger(__name__)

MAX_ATTACHMENTS_PER_ITEM = 100
PURGE_BATCH_SIZE = 500
TABLE: Table = ItemAttachment.__table__  # type: ignore[attr-defined]
_ITEMS: Table = Item.__table__  # type: ignore[attr-defined]
_SELECT = select(*TABLE.c)


async def add_attachment(
    factory: SessionFactory,
    storage: Storage,
    scope: OwnerScope,
    item_id: uuid.UUID,
    chunks: AsyncIterator[bytes],
    *,
    filename: str,
    declared_type: str,
    allowed_types: Collection[str],
    max_bytes: int,
) -> AttachmentRead:
    """Store an uploaded file and attach it to the item (see `checked_upload` for what
    is refused). No database connection is held while the file streams in, however
    slowly it comes: the item is checked in one short transaction before, and again
    when the row is written after; a file whose row is not written is deleted."""
    async with session_context(factory) as session:
        await _check_room(session, scope, item_id)
    content_type, body = await checked_upload(
        chunks, declared=declared_type, allowed=allowed_types, max_bytes=max_bytes
    )
    attachment_id = uuid7()
    key = attachment_key(item_id, attachment_id)
    size = await storage.put(key, body, content_type=content_type)
    row = {
        "id": attachment_id,
        "item_id": item_id,
        "filename": safe_filename(filename),
        "content_type": content_type,
        "size_bytes": size,
    }
    try:
        async with session_context(factory) as session:
            connection = await _check_room(session, scope, item_id)
            stored = await connection.execute(insert(TABLE).returning(*TABLE.c), row)
            attachment = AttachmentRead.model_validate(stored.one(), from_attributes=True)
    except BaseException:
        await _discard(storage, key)
        raise
    return attachment


async def _check_room(
    session: AsyncSession, scope: OwnerScope, item_id: uuid.UUID
) -> AsyncConnection:
    """The session's connection, once the item is found live in the scope with room
    for another attachment (404, 409 otherwise)."""
    await items.get(session, scope, item_id)
    connection = await session.connection()
    count = select(func.count()).select_from(TABLE).where(TABLE.c.item_id == item_id)
    if (await connection.scalar(count) or 0) >= MAX_ATTACHMENTS_PER_ITEM:
        raise ConflictError(f"An item has at most {MAX_ATTACHMENTS_PER_ITEM} attachments.")
    return connection


async def _discard(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except StorageUnavailableError as exc:
        logger.warning("could not delete %s, stored for a failed upload: %s", key, exc.reason)


async def list_attachments(
    db: Database, cache: Cache, scope: OwnerScope, item_id: uuid.UUID
) -> list[AttachmentRead]:
    """Every attachment of the item, oldest first."""
    await items.read(db, cache, scope, item_id)
    connection = await connection_of(db)
    statement = _SELECT.where(TABLE.c.item_id == item_id).order_by(TABLE.c.id)
    rows = (await connection.execute(statement)).all()
    return [AttachmentRead.model_validate(row, from_attributes=True) for row in rows]


async def get_attachment(
    db: Database, cache: Cache, scope: OwnerScope, item_id: uuid.UUID, attachment_id: uuid.UUID
) -> AttachmentRead:
    await items.read(db, cache, scope, item_id)
    connection = await connection_of(db)
    statement = _SELECT.where(TABLE.c.item_id == item_id, TABLE.c.id == attachment_id)
    row = (await connection.execute(statement)).first()
    if row is None:
        raise NotFoundError("Attachment not found.")
    return AttachmentRead.model_validate(row, from_attributes=True)


async def delete_attachment(
    session: AsyncSession,
    storage: Storage,
    scope: OwnerScope,
    item_id: uuid.UUID,
    attachment_id: uuid.UUID,
) -> None:
    """Remove the attachment; its file goes once the deletion has committed."""
    await items.get(session, scope, item_id)
    connection = await session.connection()
    statement = (
        delete(TABLE)
        .where(TABLE.c.item_id == item_id, TABLE.c.id == attachment_id)
        .returning(TABLE.c.id)
    )
    if (await connection.execute(statement)).first() is None:
        raise NotFoundError("Attachment not found.")
    key = attachment_key(item_id, attachment_id)

    async def remove_object() -> None:
        await storage.delete(key)

    on_commit(session, remove_object)  # if this fails, the file stays (docs/storage.md)


async def purge_attachments(
    factory: SessionFactory, storage: Storage, *, deleted_before: datetime
) -> int:
    """Delete the attachments (files, then rows) of items soft-deleted before
    `deleted_before`, ahead of the purge of those items; returns how many went. A file
    that cannot be deleted keeps its row, so the next purge tries again."""
    doomed = (
        select(TABLE.c.id, TABLE.c.item_id)
        .join(_ITEMS, _ITEMS.c.id == TABLE.c.item_id)
        .where(_ITEMS.c.deleted_at < deleted_before)
        .order_by(TABLE.c.id)
        .limit(PURGE_BATCH_SIZE)
    )
    total = 0
    while True:
        async with session_context(factory) as session:
            connection = await session.connection()
            batch = (await connection.execute(doomed)).all()
            for attachment_id, item_id in batch:
                await storage.delete(attachment_key(item_id, attachment_id))
            if batch:
                ids = [attachment_id for attachment_id, _ in batch]
                await connection.execute(delete(TABLE).where(TABLE.c.id.in_(ids)))
        total += len(batch)
        if len(batch) < PURGE_BATCH_SIZE:
            return total
