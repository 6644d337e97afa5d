"""Keyset pagination over any table: signed cursors, whitelisted sorts, ties by id.

`Sorts` names the columns a resource may be sorted by; `keyset_page` returns one page
in (sort column, id) order with a cursor for the next. The cursor carries the last
row's sort value and id, signed (app/core/pagination.py), so each row appears on
exactly one page however rows are added or removed in between, and a page costs an
index seek rather than an OFFSET scan.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Column, ColumnElement, Select, Table, bindparam, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel, col
from sqlmodel import select as select_rows
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.direct import DirectStatement, fetch_all
from app.core.pagination import CursorCodec, invalid_cursor

T = TypeVar("T")
MAX_CACHED_PAGE_STATEMENTS = 256
Model = TypeVar("Model", bound=SQLModel)


class PageQuery(Protocol):
    """What a list endpoint's query parameters carry (`PageParams` and its subclasses)."""

    @property
    def limit(self) -> int: ...
    @property
    def cursor(self) -> str | None: ...
    @property
    def include_total(self) -> bool: ...
    @property
    def sort(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PageResult(Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int | None


def _column(attribute: Any) -> Column[Any]:
    attribute_: Any = col(attribute)
    column: Column[Any] = attribute_.property.columns[0]
    return column


class Sorts:
    """The columns a list may be sorted by: `Sorts(created_at=Order.created_at)` allows
    `sort=created_at` and `sort=-created_at` (descending). It also keeps the page
    statements it has built, so each shape of page is built once."""

    def __init__(self, **columns: Any) -> None:
        self._columns = {name: _column(column) for name, column in columns.items()}
        self._pages: dict[tuple[Any, ...], DirectStatement[Select[Any]]] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for name in self._columns for n in (name, f"-{name}"))

    def column(self, sort: str) -> tuple[Column[Any], bool]:
        """The column and whether descending; a KeyError for a sort not allowed."""
        return self._columns[sort.lstrip("-")], sort.startswith("-")

    def page_query(
        self, table: Table, sort: str, *, after: bool, where: Sequence[ColumnElement[bool]]
    ) -> DirectStatement[Select[Any]]:
        """`table`'s rows in `sort` order then by id, `:page_limit` of them, after
        (`:after_value`, `:after_id`) when `after`. `where` must be built once too (bound
        parameters, no literal values): it is part of the cached statement."""
        key = (table.name, sort, after, *where)
        query = self._pages.get(key)
        if query is None:
            query = DirectStatement(self._build(table, sort, after=after, where=where))
            if len(self._pages) < MAX_CACHED_PAGE_STATEMENTS:  # a caller building `where`
                self._pages[key] = query  # per call would otherwise fill it forever
        return query

    def _build(
        self, table: Table, sort: str, *, after: bool, where: Sequence[ColumnElement[bool]]
    ) -> Select[Any]:
        column, descending = self.column(sort)
        ids = table.c.id
        statement = select(table).where(*where)
        if after:
            value = bindparam("after_value", type_=column.type)
            last_id = bindparam("after_id", type_=ids.type)
            statement = statement.where(_past(column, ids, value, last_id, descending=descending))
        order = (column.desc(), ids.desc()) if descending else (column.asc(), ids.asc())
        return statement.order_by(*order).limit(bindparam("page_limit"))


def _past(
    column: Any, ids: Any, value: Any, last_id: Any, *, descending: bool
) -> ColumnElement[bool]:
    """Rows strictly after (value, last_id) in (column, id) order. A row-value
    comparison, so both databases seek straight to it in the (scope, column, id) index
    instead of reading every earlier row of the scope. The bound values carry the
    column's type: on SQLite a datetime must be written the way the column stores it."""
    position, bound = tuple_(column, ids), tuple_(value, last_id)
    return position < bound if descending else position > bound


def _encode(value: Any) -> Any:
    """A sort value as JSON: dates and date-times in ISO 8601, decimals and UUIDs as
    strings, enums by value; numbers, strings and booleans as they are."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


def _decode(column: Column[Any], value: Any) -> Any:
    """`_encode`'s value back as the column's Python type; TypeError or ValueError for a
    value of any other shape."""
    # A TypeDecorator (UTCDateTime, AutoString) knows its Python type through its impl.
    kind = getattr(column.type, "impl", column.type).python_type
    if kind is bool or isinstance(value, bool):
        if kind is not bool or not isinstance(value, bool):
            raise TypeError(value)
        return value
    if issubclass(kind, date):  # datetime included
        if not isinstance(value, str):
            raise TypeError(value)
        return kind.fromisoformat(value)
    if not isinstance(value, str | int | float):
        raise TypeError(value)
    if kind is uuid.UUID or issubclass(kind, enum.Enum | Decimal):
        return kind(str(value) if kind is Decimal else value)
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise TypeError(value)
    return value


def _parse_cursor(column: Column[Any], values: list[Any]) -> tuple[Any, uuid.UUID]:
    try:
        value, last_id = values
        return _decode(column, value), uuid.UUID(last_id)
    except (TypeError, ValueError, AttributeError, InvalidOperation):
        raise invalid_cursor("cursor is malformed") from None


async def keyset_page(
    connection: AsyncConnection,
    table: Table,
    query: PageQuery,
    *,
    sorts: Sorts,
    codec: CursorCodec,
    where: Sequence[ColumnElement[bool]] = (),
    filters: Sequence[ColumnElement[bool]] = (),
    params: Mapping[str, Any] | None = None,
) -> PageResult[dict[str, Any]]:
    """One page of `table`'s rows in `query.sort` order then by id, with a signed cursor
    for the next one and the count on request. `where` is fixed per resource (bound
    parameters, filled from `params`); `filters` may carry values and vary per call.
    Rows come back as dicts by column name; without `filters`, the page is read by a
    statement built once (`DirectStatement`)."""
    column, _ = sorts.column(query.sort)
    values: dict[str, Any] = {**(params or {}), "page_limit": query.limit + 1}
    if query.cursor is not None:
        after_value, after_id = _parse_cursor(column, codec.decode(query.sort, query.cursor))
        values |= {"after_value": after_value, "after_id": after_id}
    page = sorts.page_query(table, query.sort, after=query.cursor is not None, where=where)
    if filters:
        rows = await fetch_all(connection, page.statement.where(*filters), values)
    else:
        rows = await page.all(connection, values)
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        last = rows[-1]
        next_cursor = codec.encode(query.sort, [_encode(last[column.name]), str(last["id"])])
    total = None
    if query.include_total:
        count = select(func.count()).select_from(table).where(*where, *filters)
        total = (await connection.execute(count, params or {})).scalar_one()
    return PageResult(rows, next_cursor, total)


async def iter_batches(
    session: AsyncSession,
    model: type[Model],
    where: Sequence[ColumnElement[bool]],
    *,
    order_by: Any,
    size: int,
) -> AsyncIterator[list[Model]]:
    """Every `model` row matching `where`, in (order_by, id) order, `size` at a time
    (exports, back-fills): each batch seeks past the last, none holds the table open."""
    column: Any = col(order_by)
    ids: Any = col(model.id)  # type: ignore[attr-defined]
    last: Any = None
    while True:
        statement = select_rows(model).where(*where)
        if last is not None:
            value = bindparam(None, getattr(last, column.key), type_=column.type)
            last_id = bindparam(None, last.id, type_=ids.type)
            statement = statement.where(_past(column, ids, value, last_id, descending=False))
        batch = list((await session.exec(statement.order_by(column, ids).limit(size))).all())
        if not batch:
            return
        yield batch
        last = batch[-1]
