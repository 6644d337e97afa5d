"""`ScopedStore`: create, read, page, update, delete and restore rows of one
`ScopedTable`, with the tenant scope, the versioned cache and conditional updates
built in. A resource's service module declares one store and adds its own rules:

    orders = ScopedStore(Order, OrderRead, sorts=Sorts(created_at=Order.created_at))

Every statement the store runs is limited to the caller's `OwnerScope` and to live
rows (deleted rows are reachable only through `restore`). Statements are SQLAlchemy
Core, built once per shape with bound parameters, and run on the session's
connection: the same transaction as everything else in the request, without the
ORM's unit of work for rows that go straight into a response. Rows come back as the
read schema. Writes never commit: the request's one transaction (`SessionDep`)
commits them, and the cache is written after that commit only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo
from sqlalchemy import ColumnElement, Insert, Row, Table, bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.direct import DirectStatement
from app.core.exceptions import NotFoundError
from app.core.pagination import CursorCodec
from app.models.base import ScopedTable
from app.resources.cache import VersionedCache
from app.resources.paging import PageQuery, PageResult, Sorts, iter_batches, keyset_page
from app.resources.scope import OwnerScope
from app.resources.versioning import check_version, conditional_update

Model = TypeVar("Model", bound=ScopedTable)
# Reads run on the request's session (inside its transaction) or on a bare read
# connection (`ReadConnectionDep`), which skips building an ORM session.
Database = AsyncSession | AsyncConnection
Schema = TypeVar("Schema", bound=BaseModel)

DEFAULT_CACHE_TTL = 60.0


class ScopedStore(Generic[Model, Schema]):
    def __init__(
        self,
        model: type[Model],
        schema: type[Schema],
        *,
        sorts: Sorts,
        noun: str | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
    ) -> None:
        """`schema` is what reads return (and the cache holds); `noun` names the
        resource in error messages ("Order not found."), the model's name by default."""
        self.model = model
        self.schema = schema
        self._rows = TypeAdapter(list[schema])  # type: ignore[valid-type]
        self.sorts = sorts
        self.noun = noun or model.__name__
        self.table: Table = model.__table__  # type: ignore[attr-defined]
        self.cache = VersionedCache(
            self.table.name, schema, ttl=cache_ttl, not_found=self.not_found
        )
        self._defaults = _python_defaults(model, self.table)
        self._insert = insert(self.table).returning(self.table)
        self._inserts: dict[frozenset[str], DirectStatement[Insert]] = {}  # by the columns given
        # Per scope kind (tenant or owner): the live rows, one live row, one deleted row.
        self._live = {kind: self._where(kind, deleted=False) for kind in (True, False)}
        self._one = {kind: (*self._live[kind], self._by_id) for kind in (True, False)}
        self._one_deleted = {
            kind: (*self._where(kind, deleted=True), self._by_id) for kind in (True, False)
        }
        self._get = {
            kind: DirectStatement(select(self.table).where(*self._one[kind]))
            for kind in (True, False)
        }

    @property
    def not_found(self) -> str:
        return f"{self.noun} not found."

    @property
    def _by_id(self) -> ColumnElement[bool]:
        return self.table.c.id == bindparam("row_id")

    def _where(self, by_tenant: bool, *, deleted: bool) -> tuple[ColumnElement[bool], ...]:
        state = self.table.c.deleted_at
        alive = state.is_not(None) if deleted else state.is_(None)
        return alive, OwnerScope.clause(self.table, by_tenant=by_tenant)

    def _read(self, row: Row[Any] | Mapping[str, Any]) -> Schema:
        return self.schema.model_validate(row, from_attributes=True)

    async def create(
        self, session: AsyncSession, owner_id: uuid.UUID, tenant_id: str | None, **values: Any
    ) -> Schema:
        # The scope goes last: no value a schema lets through can move the row elsewhere.
        row = {**values, "tenant_id": tenant_id, "owner_id": owner_id}
        for name, field in self._defaults:
            if name not in row:
                row[name] = field.get_default(call_default_factory=True)
        columns = frozenset(row)
        statement = self._inserts.get(columns)
        if statement is None:
            statement = self._inserts[columns] = DirectStatement(self._insert, columns=list(row))
        connection = await session.connection()
        (created,) = await statement.all(connection, row)
        return self._read(created)

    async def get(self, db: Database, scope: OwnerScope, row_id: uuid.UUID) -> Schema:
        """The live row, from the database; `NotFoundError` outside the scope."""
        connection = await connection_of(db)
        params = {**scope.params(), "row_id": row_id}
        row = await self._get[scope.by_tenant].first(connection, params)
        if row is None:
            raise NotFoundError(self.not_found)
        return self._read(row)

    async def read(
        self, db: Database, cache: Cache, scope: OwnerScope, row_id: uuid.UUID
    ) -> Schema:
        """The live row as the read schema, from the cache when it holds it."""
        return await self.cache.read(cache, scope, row_id, lambda: self.get(db, scope, row_id))

    async def page(
        self,
        db: Database,
        scope: OwnerScope,
        query: PageQuery,
        *,
        codec: CursorCodec,
        where: Sequence[ColumnElement[bool]] = (),
    ) -> PageResult[Schema]:
        """One page of the scope's live rows matching `where` (see `keyset_page`)."""
        connection = await connection_of(db)
        page = await keyset_page(
            connection,
            self.table,
            query,
            sorts=self.sorts,
            codec=codec,
            where=self._live[scope.by_tenant],
            filters=where,
            params=scope.params(),
        )
        rows = self._rows.validate_python(page.items)
        return PageResult(rows, page.next_cursor, page.total)

    def batches(
        self,
        session: AsyncSession,
        scope: OwnerScope,
        *,
        where: Sequence[ColumnElement[bool]] = (),
        size: int = 500,
    ) -> AsyncIterator[list[Model]]:
        """Every live row of the scope matching `where`, oldest first, `size` at a time,
        as model objects (for exports and other work outside a request)."""
        clauses = [self.model.not_deleted(), scope.where(self.model), *where]
        order = self.model.created_at
        return iter_batches(session, self.model, clauses, order_by=order, size=size)

    async def update(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        changes: dict[str, Any],
        expected: Collection[int] | None = None,
    ) -> Schema:
        """Apply `changes` in one conditional UPDATE (412 when the row is at none of the
        `expected` versions); bumps `version`. No changes: the row as it is."""
        if not changes:
            row = await self.get(session, scope, row_id)
            check_version(vars(row)["version"], expected, self.noun)
            return row
        where = self._one[scope.by_tenant]
        return await self._write(session, cache, scope, row_id, where, changes, expected)

    async def delete(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        expected: Collection[int] | None = None,
    ) -> Schema:
        """Soft delete: the row stays (restorable) until the retention purge removes it."""
        where = self._one[scope.by_tenant]
        values = {"deleted_at": func.now()}
        return await self._write(session, cache, scope, row_id, where, values, expected)

    async def restore(
        self, session: AsyncSession, cache: Cache, scope: OwnerScope, row_id: uuid.UUID
    ) -> Schema:
        """Undo a soft delete; restoring a live row returns it unchanged."""
        where = self._one_deleted[scope.by_tenant]
        try:
            return await self._write(session, cache, scope, row_id, where, {"deleted_at": None})
        except NotFoundError:
            return await self.get(session, scope, row_id)

    async def _write(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        where: Sequence[ColumnElement[bool]],
        values: dict[str, Any],
        expected: Collection[int] | None = None,
    ) -> Schema:
        connection: AsyncConnection = await session.connection()
        params = {**scope.params(), "row_id": row_id}
        row = await conditional_update(
            connection, self.table, where, values, params=params, expected=expected, noun=self.noun
        )
        written = self._read(row)
        deleted = row["deleted_at"] is not None
        self.cache.store_after_commit(
            session, cache, scope, row_id, row["version"], written, deleted
        )
        return written


async def connection_of(db: Database) -> AsyncConnection:
    """The connection `db` runs on (a session's, in its transaction)."""
    return db if isinstance(db, AsyncConnection) else await db.connection()


def _python_defaults(model: type[ScopedTable], table: Table) -> list[tuple[str, FieldInfo]]:
    """The fields whose default the model computes in Python (ids, versions, lists):
    an INSERT that does not name them gets them here; the database fills the rest."""
    defaults = []
    for name, field in model.model_fields.items():
        column = table.c.get(name)
        if column is None or column.server_default is not None:
            continue
        if not field.is_required() and (field.default_factory or field.default is not None):
            defaults.append((name, field))
    return defaults
