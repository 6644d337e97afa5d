"""Items: the rules of the reference resource, on the resource kit (app/resources).

The store limits every query to the caller's `OwnerScope`, caches single items
(written through after commit, versioned so a racing read never restores an old
item), and makes writes single conditional UPDATE statements checked against
`If-Match`. What is left here is what is particular to items: their filters.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.pagination import CursorCodec
from app.models.item import Item, ItemStatus
from app.models.user import User
from app.resources import OwnerScope, PageResult, ScopedStore, Sorts
from app.resources.store import Database
from app.schemas.item import ItemCreate, ItemListParams, ItemRead

EXPORT_BATCH_SIZE = 500

items = ScopedStore(Item, ItemRead, sorts=Sorts(created_at=Item.created_at, title=Item.title))


@dataclass(frozen=True, slots=True)
class ItemFilters:
    status: ItemStatus | None = None
    q: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def where(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.status is not None:
            clauses.append(col(Item.status) == self.status)
        if self.q:
            escaped = self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(col(Item.title).ilike(f"%{escaped}%", escape="\\"))
        if self.created_after is not None:
            clauses.append(col(Item.created_at) > self.created_after)
        if self.created_before is not None:
            clauses.append(col(Item.created_at) < self.created_before)
        return clauses


async def create_item(
    session: AsyncSession, owner: User, tenant_id: str | None, data: ItemCreate
) -> ItemRead:
    return await items.create(session, owner.id, tenant_id, **data.model_dump())


async def read_item(db: Database, cache: Cache, scope: OwnerScope, item_id: uuid.UUID) -> ItemRead:
    """One item, from the cache when it holds it (a Redis outage only costs speed)."""
    return await items.read(db, cache, scope, item_id)


async def list_items(
    db: Database, scope: OwnerScope, params: ItemListParams, codec: CursorCodec
) -> PageResult[ItemRead]:
    """A page in (sort key, id) order; the cursor keeps each row on exactly one page."""
    filters = ItemFilters(params.status, params.q, params.created_after, params.created_before)
    return await items.page(db, scope, params, codec=codec, where=filters.where())


async def update_item(
    session: AsyncSession,
    cache: Cache,
    scope: OwnerScope,
    item_id: uuid.UUID,
    changes: dict[str, Any],
    expected_versions: Collection[int] | None = None,
) -> ItemRead:
    """Apply `changes` (only the fields the client sent); bumps `version`."""
    return await items.update(session, cache, scope, item_id, changes, expected_versions)


async def delete_item(
    session: AsyncSession,
    cache: Cache,
    scope: OwnerScope,
    item_id: uuid.UUID,
    expected_versions: Collection[int] | None = None,
) -> None:
    """Soft delete: the row stays (restorable) until the retention purge removes it."""
    await items.delete(session, cache, scope, item_id, expected_versions)


async def restore_item(
    session: AsyncSession, cache: Cache, scope: OwnerScope, item_id: uuid.UUID
) -> ItemRead:
    """Undo a soft delete; restoring a live item returns it unchanged."""
    return await items.restore(session, cache, scope, item_id)


def iter_items(
    session: AsyncSession, scope: OwnerScope, filters: ItemFilters
) -> AsyncIterator[list[Item]]:
    """Every matching item, oldest first, in batches (for exports)."""
    return items.batches(session, scope, where=filters.where(), size=EXPORT_BATCH_SIZE)
