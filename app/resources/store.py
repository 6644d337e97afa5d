"""`ScopedStore`: create, read, page, update, delete and restore rows of one
`ScopedTable`, with the tenant scope, the versioned cache and conditional updates
built in. A resource's service module declares one store and adds its own rules:

    orders = ScopedStore(Order, OrderRead, sorts=Sorts(created_at=Order.created_at))

Every statement the store builds is limited to the caller's `OwnerScope` and to live
rows (deleted rows are reachable only through `restore`). Writes flush, never commit:
the request's one transaction (`SessionDep`) commits them, and the cache is written
after that commit only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.exceptions import NotFoundError
from app.core.pagination import CursorCodec
from app.models.base import ScopedTable
from app.resources.cache import VersionedCache
from app.resources.paging import PageQuery, PageResult, Sorts, iter_batches, keyset_page
from app.resources.scope import OwnerScope
from app.resources.versioning import check_version, conditional_update

Row = TypeVar("Row", bound=ScopedTable)
Schema = TypeVar("Schema", bound=BaseModel)

DEFAULT_CACHE_TTL = 60.0


class ScopedStore(Generic[Row, Schema]):
    def __init__(
        self,
        model: type[Row],
        schema: type[Schema],
        *,
        sorts: Sorts,
        noun: str | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
    ) -> None:
        """`schema` is what reads return (and the cache holds); `noun` names the
        resource in error messages ("Order not found."), the model's name by default."""
        self.model = model
        self.sorts = sorts
        self.noun = noun or model.__name__
        table: str = model.__tablename__  # type: ignore[assignment]
        self.cache = VersionedCache(table, schema, ttl=cache_ttl, not_found=self.not_found)

    @property
    def not_found(self) -> str:
        return f"{self.noun} not found."

    def live(self, scope: OwnerScope, *where: ColumnElement[bool]) -> list[ColumnElement[bool]]:
        """The WHERE clauses for the scope's live rows, plus `where`."""
        return [self.model.not_deleted(), scope.where(self.model), *where]

    def _one(self, scope: OwnerScope, row_id: uuid.UUID) -> list[ColumnElement[bool]]:
        return self.live(scope, col(self.model.id) == row_id)

    async def create(
        self, session: AsyncSession, owner_id: uuid.UUID, tenant_id: str | None, **values: Any
    ) -> Row:
        row = self.model(tenant_id=tenant_id, owner_id=owner_id, **values)
        session.add(row)
        await session.flush()
        return row

    async def get(self, session: AsyncSession, scope: OwnerScope, row_id: uuid.UUID) -> Row:
        """The live row, from the database; `NotFoundError` outside the scope."""
        row = (await session.exec(select(self.model).where(*self._one(scope, row_id)))).first()
        if row is None:
            raise NotFoundError(self.not_found)
        return row

    async def read(
        self, session: AsyncSession, cache: Cache, scope: OwnerScope, row_id: uuid.UUID
    ) -> Schema:
        """The live row as the read schema, from the cache when it holds it."""
        return await self.cache.read(cache, scope, row_id, lambda: self.get(session, scope, row_id))

    async def page(
        self,
        session: AsyncSession,
        scope: OwnerScope,
        query: PageQuery,
        *,
        codec: CursorCodec,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> PageResult[Row]:
        """One page of the scope's live rows matching `where` (see `keyset_page`)."""
        where = self.live(scope, *where)
        return await keyset_page(session, self.model, where, query, sorts=self.sorts, codec=codec)

    def batches(
        self,
        session: AsyncSession,
        scope: OwnerScope,
        *,
        where: Sequence[ColumnElement[bool]] = (),
        size: int = 500,
    ) -> AsyncIterator[list[Row]]:
        """Every live row of the scope matching `where`, oldest first, `size` at a time."""
        where = self.live(scope, *where)
        order = self.model.created_at
        return iter_batches(session, self.model, where, order_by=order, size=size)

    async def update(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        changes: dict[str, Any],
        expected: Collection[int] | None = None,
    ) -> Row:
        """Apply `changes` in one conditional UPDATE (412 when the row is at none of the
        `expected` versions); bumps `version`. No changes: the row as it is."""
        if not changes:
            row = await self.get(session, scope, row_id)
            check_version(row, expected, self.noun)
            return row
        return await self._write(session, cache, scope, self._one(scope, row_id), changes, expected)

    async def delete(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        expected: Collection[int] | None = None,
    ) -> Row:
        """Soft delete: the row stays (restorable) until the retention purge removes it."""
        values = {"deleted_at": func.now()}
        return await self._write(session, cache, scope, self._one(scope, row_id), values, expected)

    async def restore(
        self, session: AsyncSession, cache: Cache, scope: OwnerScope, row_id: uuid.UUID
    ) -> Row:
        """Undo a soft delete; restoring a live row returns it unchanged."""
        deleted = [self.model.only_deleted(), scope.where(self.model), col(self.model.id) == row_id]
        try:
            return await self._write(session, cache, scope, deleted, {"deleted_at": None}, None)
        except NotFoundError:
            return await self.get(session, scope, row_id)

    async def _write(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        where: list[ColumnElement[bool]],
        values: dict[str, Any],
        expected: Collection[int] | None,
    ) -> Row:
        row = await conditional_update(
            session, self.model, where, values, expected=expected, noun=self.noun
        )
        self.cache.store_after_commit(session, cache, scope, row)
        return row
