"""Tables that exist only in tests, on their own metadata so migrations never see them."""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Enum, Numeric, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from app.models.base import SoftDeleteMixin, UTCDateTime


class ScratchTable(SQLModel, registry=registry()):
    """Base of test-only tables: `ScratchTable.metadata` is not `SQLModel.metadata`."""


class Note(ScratchTable, table=True):
    __tablename__ = "test_notes"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    title: str


class Trash(ScratchTable, SoftDeleteMixin, table=True):
    __tablename__ = "test_trash"

    id: int | None = Field(default=None, primary_key=True)
    label: str


class Rank(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class Ranked(ScratchTable, table=True):
    """A table with a sortable column of every kind a cursor must carry."""

    __tablename__ = "test_ranked"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    score: int
    label: str
    # Stored as its value, as items store their status: sorts by value on every database.
    rank: Rank = Field(
        sa_type=Enum(Rank, native_enum=False, values_callable=lambda e: [m.value for m in e])
    )
    ref: uuid.UUID
    seen_at: datetime = Field(sa_type=UTCDateTime)
    flag: bool
    day: date
    amount: Decimal = Field(sa_type=Numeric(10, 2, asdecimal=True))


async def count_notes(engine: AsyncEngine) -> int:
    """How many notes are stored (rows a rolled-back request must not leave)."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(Note))).scalar_one())


@asynccontextmanager
async def scratch_tables(engine: AsyncEngine) -> AsyncIterator[None]:
    """Create the test-only tables for the duration of a test, then drop them."""
    async with engine.begin() as conn:
        await conn.run_sync(ScratchTable.metadata.create_all)
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(ScratchTable.metadata.drop_all)
