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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import ColumnElement, func, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.pagination import CursorCodec, invalid_cursor

Row = TypeVar("Row", bound=SQLModel)


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
class PageResult(Generic[Row]):
    items: list[Row]
    next_cursor: str | None
    total: int | None


class Sorts:
    """The columns a list may be sorted by: `Sorts(created_at=Order.created_at)` allows
    `sort=created_at` and `sort=-created_at` (descending)."""

    def __init__(self, **columns: Any) -> None:
        self._columns: dict[str, InstrumentedAttribute[Any]] = {
            name: col(column)  # type: ignore[misc]
            for name, column in columns.items()
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for name in self._columns for n in (name, f"-{name}"))

    def column(self, sort: str) -> tuple[InstrumentedAttribute[Any], bool]:
        """The column and whether descending; a KeyError for a sort not allowed."""
        return self._columns[sort.lstrip("-")], sort.startswith("-")


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _decode(column: InstrumentedAttribute[Any], value: Any) -> Any:
    # A TypeDecorator (UTCDateTime, AutoString) knows its Python type through its impl.
    kind = getattr(column.type, "impl", column.type).python_type
    if issubclass(kind, datetime):
        if not isinstance(value, str):
            raise TypeError(value)
        return datetime.fromisoformat(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(value)
    if kind is uuid.UUID or issubclass(kind, enum.Enum):
        return kind(value)
    if not isinstance(value, kind):
        raise TypeError(value)
    return value


def _parse_cursor(column: InstrumentedAttribute[Any], values: list[Any]) -> tuple[Any, uuid.UUID]:
    try:
        value, last_id = values
        return _decode(column, value), uuid.UUID(last_id)
    except (TypeError, ValueError, AttributeError):
        raise invalid_cursor("cursor is malformed") from None


def after(
    model: type[SQLModel], column: Any, descending: bool, value: Any, last_id: uuid.UUID
) -> ColumnElement[bool]:
    """Rows strictly after (value, last_id) in (column, id) order. A row-value
    comparison, so both databases seek straight to it in the (scope, column, id) index
    instead of reading every earlier row of the scope."""
    ids: Any = col(model.id)  # type: ignore[attr-defined]
    position = tuple_(column, ids)
    # Typed binds: on SQLite a datetime must be written the way the column stores it.
    bound = tuple_(literal(value, column.type), literal(last_id, ids.type))
    return position < bound if descending else position > bound


async def keyset_page(
    session: AsyncSession,
    model: type[Row],
    where: Sequence[ColumnElement[bool]],
    query: PageQuery,
    *,
    sorts: Sorts,
    codec: CursorCodec,
) -> PageResult[Row]:
    """One page of `model` rows matching `where`, in `query.sort` order then by id."""
    column, descending = sorts.column(query.sort)
    statement = select(model).where(*where)
    if query.cursor is not None:
        value, last_id = _parse_cursor(column, codec.decode(query.sort, query.cursor))
        statement = statement.where(after(model, column, descending, value, last_id))
    ids: Any = col(model.id)  # type: ignore[attr-defined]
    order = (column.desc(), ids.desc()) if descending else (column.asc(), ids.asc())
    limit = query.limit
    rows = list((await session.exec(statement.order_by(*order).limit(limit + 1))).all())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        key = [_encode(getattr(last, column.key)), str(last.id)]  # type: ignore[attr-defined]
        next_cursor = codec.encode(query.sort, key)
    total = None
    if query.include_total:
        count = select(func.count()).select_from(model).where(*where)
        total = (await session.exec(count)).one()
    return PageResult(rows, next_cursor, total)


async def iter_batches(
    session: AsyncSession,
    model: type[Row],
    where: Sequence[ColumnElement[bool]],
    *,
    order_by: Any,
    size: int,
) -> AsyncIterator[list[Row]]:
    """Every `model` row matching `where`, in (order_by, id) order, `size` at a time
    (exports, back-fills): each batch seeks past the last, none holds the table open."""
    column: Any = col(order_by)
    ids: Any = col(model.id)  # type: ignore[attr-defined]
    last: Any = None
    while True:
        statement = select(model).where(*where)
        if last is not None:
            position = getattr(last, column.key)
            statement = statement.where(after(model, column, False, position, last.id))
        batch = list((await session.exec(statement.order_by(column, ids).limit(size))).all())
        if not batch:
            return
        yield batch
        last = batch[-1]
