"""Items: the queries and rules of the reference resource. No HTTP types here.

Every query is limited to an `ItemScope`: the caller's tenant when the token names
one, otherwise the caller's own tenant-less items. An item outside the scope does not
exist as far as the caller can tell (404, never 403). Writes are single conditional
UPDATE statements, so optimistic concurrency (`version`) holds under concurrent
requests without a read-then-write race.

Single items are cached per scope. A write stores what it committed (a deletion as a
tombstone) with the item's version, and a cache fill never replaces a newer version,
so a read racing a write cannot leave the old item in the cache.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, func, literal, tuple_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import metrics
from app.core.cache import Cache
from app.core.db import on_commit
from app.core.exceptions import NotFoundError, PreconditionFailedError
from app.core.pagination import CursorCodec, invalid_cursor
from app.models.item import Item, ItemStatus
from app.models.user import User
from app.schemas.item import ItemCreate, ItemRead

ITEM_CACHE_TTL = 60.0
EXPORT_BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class ItemScope:
    """Whose items a caller sees: a tenant's, or (without a tenant) one user's own, the
    user being the token's issuer and subject."""

    tenant_id: str | None
    issuer: str
    subject: str

    def where(self) -> ColumnElement[bool]:
        if self.tenant_id is not None:
            return col(Item.tenant_id) == self.tenant_id
        owner = select(col(User.id)).where(
            col(User.subject) == self.subject, col(User.issuer) == self.issuer
        )
        return and_(col(Item.tenant_id).is_(None), col(Item.owner_id) == owner.scalar_subquery())

    def cache_key(self, item_id: uuid.UUID) -> str:
        if self.tenant_id is not None:
            return f"items:t:{self.tenant_id}:{item_id}"
        # The issuer's length first: an issuer may contain ":", the key stays unambiguous.
        return f"items:u:{len(self.issuer)}:{self.issuer}:{self.subject}:{item_id}"


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


@dataclass(frozen=True, slots=True)
class ItemPage:
    items: list[Item]
    next_cursor: str | None
    total: int | None


async def create_item(
    session: AsyncSession, owner: User, tenant_id: str | None, data: ItemCreate
) -> Item:
    item = Item(tenant_id=tenant_id, owner_id=owner.id, **data.model_dump())
    session.add(item)
    await session.flush()
    return item


async def get_item(session: AsyncSession, scope: ItemScope, item_id: uuid.UUID) -> Item:
    live = (col(Item.id) == item_id, scope.where(), Item.not_deleted())
    item = (await session.exec(select(Item).where(*live))).first()
    if item is None:
        raise NotFoundError("Item not found.")
    return item


def _from_cache(entry: Any) -> ItemRead | None:
    """The cached item; None for a miss or an entry this code cannot read (written by
    another release, say); `NotFoundError` for a cached deletion."""
    if not isinstance(entry, dict):
        return None
    if entry.get("deleted") is True:
        raise NotFoundError("Item not found.")
    try:
        return ItemRead.model_validate(entry)
    except ValidationError:
        return None


async def read_item(
    session: AsyncSession, cache: Cache, scope: ItemScope, item_id: uuid.UUID
) -> ItemRead:
    """One item, from the cache when it holds it (a Redis outage only costs speed)."""
    key = scope.cache_key(item_id)
    cached = _from_cache(await cache.get_json(key))
    if cache.redis is not None:
        metrics.CACHE_READS.labels("miss" if cached is None else "hit").inc()
    if cached is not None:
        return cached
    item = ItemRead.model_validate(await get_item(session, scope, item_id))
    await cache.set_json_if_newer(key, item.model_dump(mode="json"), ttl=ITEM_CACHE_TTL)
    return item


def _cache_after_commit(session: AsyncSession, cache: Cache, scope: ItemScope, item: Item) -> None:
    """Once the write commits, cache what it wrote (a tombstone for a deletion)."""
    key = scope.cache_key(item.id)
    if item.deleted_at is None:
        entry: dict[str, Any] = ItemRead.model_validate(item).model_dump(mode="json")
    else:
        entry = {"version": item.version, "deleted": True}

    async def store() -> None:
        await cache.set_json_if_newer(key, entry, ttl=ITEM_CACHE_TTL)

    on_commit(session, store)


# `version` is a 32-bit INTEGER on PostgreSQL: a larger number can never match (and
# would be an out-of-range parameter rather than a mismatch).
_MAX_VERSION = 2**31 - 1


async def _conditional_update(
    session: AsyncSession,
    scope: ItemScope,
    item_id: uuid.UUID,
    values: dict[str, Any],
    *,
    deleted: bool,
    expected_versions: Collection[int] | None,
) -> Item:
    """UPDATE the item in one statement; 404 when out of reach, 412 on a stale version."""
    state = Item.only_deleted() if deleted else Item.not_deleted()
    where = [col(Item.id) == item_id, scope.where(), state]
    versioned = list(where)
    if expected_versions is not None:
        possible = [v for v in expected_versions if 0 < v <= _MAX_VERSION]
        versioned.append(col(Item.version).in_(possible))
    statement = (
        update(Item)
        .where(*versioned)
        .values(**values, version=col(Item.version) + 1)
        .returning(Item)
        # The session may already hold this row: return the values just written.
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    item: Item | None = (await session.exec(statement)).scalars().first()
    if item is not None:
        return item
    exists = select(col(Item.id)).where(*where)
    if expected_versions is not None and (await session.exec(exists)).first() is not None:
        raise PreconditionFailedError("The item has changed since it was read; fetch it again.")
    raise NotFoundError("Item not found.")


async def update_item(
    session: AsyncSession,
    cache: Cache,
    scope: ItemScope,
    item_id: uuid.UUID,
    changes: dict[str, Any],
    expected_versions: Collection[int] | None = None,
) -> Item:
    """Apply `changes` (only the fields the client sent); bumps `version`."""
    if not changes:
        item = await get_item(session, scope, item_id)
        if expected_versions is not None and item.version not in expected_versions:
            raise PreconditionFailedError("The item has changed since it was read; fetch it again.")
        return item
    item = await _conditional_update(
        session, scope, item_id, changes, deleted=False, expected_versions=expected_versions
    )
    _cache_after_commit(session, cache, scope, item)
    return item


async def delete_item(
    session: AsyncSession,
    cache: Cache,
    scope: ItemScope,
    item_id: uuid.UUID,
    expected_versions: Collection[int] | None = None,
) -> None:
    """Soft delete: the row stays (restorable) until the retention purge removes it."""
    values = {"deleted_at": func.now()}
    item = await _conditional_update(
        session, scope, item_id, values, deleted=False, expected_versions=expected_versions
    )
    _cache_after_commit(session, cache, scope, item)


async def restore_item(
    session: AsyncSession, cache: Cache, scope: ItemScope, item_id: uuid.UUID
) -> Item:
    """Undo a soft delete; restoring a live item returns it unchanged."""
    try:
        item = await _conditional_update(
            session, scope, item_id, {"deleted_at": None}, deleted=True, expected_versions=None
        )
    except NotFoundError:
        return await get_item(session, scope, item_id)
    _cache_after_commit(session, cache, scope, item)
    return item


_SORT_COLUMNS = {"created_at": Item.created_at, "title": Item.title}


def _sort(sort: str) -> tuple[Any, bool]:
    return col(_SORT_COLUMNS[sort.lstrip("-")]), sort.startswith("-")


def _after(column: Any, descending: bool, value: Any, last_id: uuid.UUID) -> ColumnElement[bool]:
    """Rows strictly after (value, last_id) in the (column, id) order. A row-value
    comparison, so both databases seek straight to it in the (scope, column, id) index
    instead of reading every earlier row of the scope."""
    ids: Any = col(Item.id)
    position = tuple_(column, ids)
    # Typed binds: on SQLite the datetime must be written the way the column stores it.
    after = tuple_(literal(value, column.type), literal(last_id, ids.type))
    return position < after if descending else position > after


def _sort_key(sort: str, item: Item) -> list[str]:
    value = item.created_at.isoformat() if sort.endswith("created_at") else item.title
    return [value, str(item.id)]


def _parse_key(sort: str, values: list[Any]) -> tuple[Any, uuid.UUID]:
    try:
        value, last_id = values
        if not isinstance(value, str):
            raise TypeError(value)
        parsed = datetime.fromisoformat(value) if sort.endswith("created_at") else value
        return parsed, uuid.UUID(last_id)
    except (TypeError, ValueError):
        raise invalid_cursor("cursor is malformed") from None


async def list_items(
    session: AsyncSession,
    scope: ItemScope,
    filters: ItemFilters,
    *,
    codec: CursorCodec,
    limit: int,
    sort: str,
    cursor: str | None = None,
    include_total: bool = False,
) -> ItemPage:
    """A page in (sort key, id) order; the cursor keeps each row on exactly one page."""
    column, descending = _sort(sort)
    where = [scope.where(), Item.not_deleted(), *filters.where()]
    statement = select(Item).where(*where)
    if cursor is not None:
        value, last_id = _parse_key(sort, codec.decode(sort, cursor))
        statement = statement.where(_after(column, descending, value, last_id))
    ids = col(Item.id)
    order = (column.desc(), ids.desc()) if descending else (column.asc(), ids.asc())
    rows = list((await session.exec(statement.order_by(*order).limit(limit + 1))).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = codec.encode(sort, _sort_key(sort, rows[-1]))
    total = None
    if include_total:
        count = select(func.count()).select_from(Item).where(*where)
        total = (await session.exec(count)).one()
    return ItemPage(rows, next_cursor, total)


async def iter_items(
    session: AsyncSession, scope: ItemScope, filters: ItemFilters
) -> AsyncIterator[list[Item]]:
    """Every matching item, oldest first, in batches (for exports)."""
    where = [scope.where(), Item.not_deleted(), *filters.where()]
    created, ids = col(Item.created_at), col(Item.id)
    last: Item | None = None
    while True:
        statement = select(Item).where(*where)
        if last is not None:
            statement = statement.where(_after(created, False, last.created_at, last.id))
        statement = statement.order_by(created, ids).limit(EXPORT_BATCH_SIZE)
        batch = list((await session.exec(statement)).all())
        if not batch:
            return
        yield batch
        last = batch[-1]
