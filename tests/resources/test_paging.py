"""Keyset paging over any table: every sort kind a cursor carries, ties, bad cursors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.db import create_session_factory, read_engine, session_context
from app.core.exceptions import ValidationError
from app.core.pagination import CursorCodec
from app.resources import Sorts
from app.resources.paging import iter_batches, keyset_page
from tests.tables import Rank, Ranked

pytestmark = pytest.mark.usefixtures("tables")

SORTS = Sorts(
    score=Ranked.score,
    label=Ranked.label,
    rank=Ranked.rank,
    ref=Ranked.ref,
    seen=Ranked.seen_at,
    flag=Ranked.flag,
    day=Ranked.day,
    amount=Ranked.amount,
)
CODEC = CursorCodec("secret")
TABLE = Ranked.__table__  # type: ignore[attr-defined]
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Query:
    sort: str
    limit: int = 3
    cursor: str | None = None
    include_total: bool = False


def _rows() -> list[Ranked]:
    # Few distinct values per column: most sort keys tie, and the id must break them.
    return [
        Ranked(
            score=i % 3,
            label=f"l{i % 4}",
            rank=Rank.HIGH if i % 2 else Rank.LOW,
            ref=uuid.UUID(int=i % 5),
            seen_at=START + timedelta(seconds=i % 6),
            flag=i % 3 == 0,
            day=START.date() + timedelta(days=i % 4),
            amount=Decimal(i % 5) / 4,
        )
        for i in range(13)
    ]


async def _pages(engine: AsyncEngine, sort: str, *, reader: bool) -> list[uuid.UUID]:
    """Every page's ids, read in a transaction or on a read connection (on PostgreSQL,
    the driver itself runs those)."""
    seen: list[uuid.UUID] = []
    query = Query(sort, include_total=True)
    opened = read_engine(engine).connect() if reader else engine.begin()
    async with opened as connection:
        while True:
            page = await keyset_page(connection, TABLE, query, sorts=SORTS, codec=CODEC)
            assert page.total == 13
            assert len(page.items) <= 3
            seen += [row["id"] for row in page.items]
            if page.next_cursor is None:
                return seen
            query.cursor = page.next_cursor


def _key(row: Ranked, sort: str) -> tuple[Any, uuid.UUID]:
    column = {"seen": "seen_at"}.get(sort.lstrip("-"), sort.lstrip("-"))
    value = getattr(row, column)
    return (str(value) if isinstance(value, Rank) else value), row.id


@pytest.mark.parametrize("reader", [False, True], ids=["transaction", "read-connection"])
@pytest.mark.parametrize("sort", [*SORTS.names])
async def test_every_row_appears_once_in_sort_then_id_order(
    db_engine: AsyncEngine, sort: str, reader: bool
) -> None:
    rows = _rows()
    async with session_context(create_session_factory(db_engine)) as session:
        session.add_all(rows)
    expected = sorted(rows, key=lambda row: _key(row, sort), reverse=sort.startswith("-"))
    assert await _pages(db_engine, sort, reader=reader) == [row.id for row in expected]


@pytest.mark.parametrize(
    ("sort", "values", "reason"),
    [
        ("score", ["7", str(uuid.uuid4())], "malformed"),  # a string for an integer
        ("score", [True, str(uuid.uuid4())], "malformed"),
        ("seen", [17, str(uuid.uuid4())], "malformed"),  # a number for a date-time
        ("seen", ["yesterday", str(uuid.uuid4())], "malformed"),
        ("rank", ["middle", str(uuid.uuid4())], "malformed"),
        ("ref", ["not-a-uuid", str(uuid.uuid4())], "malformed"),
        ("label", ["l1", "not-a-uuid"], "malformed"),
        ("label", ["l1"], "malformed"),
        ("flag", ["true", str(uuid.uuid4())], "malformed"),  # a string for a boolean
        ("score", [1.5, str(uuid.uuid4())], "malformed"),
        ("day", ["2026-13-01", str(uuid.uuid4())], "malformed"),
        ("amount", ["lots", str(uuid.uuid4())], "malformed"),
    ],
)
async def test_a_signed_cursor_with_values_of_the_wrong_kind_is_a_422(
    db_engine: AsyncEngine, sort: str, values: list[Any], reason: str
) -> None:
    query = Query(sort, cursor=CODEC.encode(sort, values))
    async with session_context(create_session_factory(db_engine)) as session:
        with pytest.raises(ValidationError) as refused:
            await keyset_page(await session.connection(), TABLE, query, sorts=SORTS, codec=CODEC)
    assert reason in refused.value.details[0]["message"]


async def test_a_cursor_from_another_sort_is_refused(db_engine: AsyncEngine) -> None:
    query = Query("-score", cursor=CODEC.encode("score", [1, str(uuid.uuid4())]))
    async with session_context(create_session_factory(db_engine)) as session:
        with pytest.raises(ValidationError):
            await keyset_page(await session.connection(), TABLE, query, sorts=SORTS, codec=CODEC)


async def test_batches_cover_the_matching_rows_once(db_engine: AsyncEngine) -> None:
    rows = _rows()
    async with session_context(create_session_factory(db_engine)) as session:
        session.add_all(rows)
    wanted = [col(Ranked.score) > 0]
    async with session_context(create_session_factory(db_engine)) as session:
        batches = [
            batch
            async for batch in iter_batches(
                session, Ranked, wanted, order_by=Ranked.seen_at, size=4
            )
        ]
    assert all(len(batch) <= 4 for batch in batches)
    got = [row.id for batch in batches for row in batch]
    expected = sorted((row for row in rows if row.score > 0), key=lambda r: (r.seen_at, r.id))
    assert got == [row.id for row in expected]
