"""Conditional updates: one UPDATE statement that checks the row's version itself.

`If-Match` (app/api/preconditions.py) gives the versions a client accepts; the UPDATE
matches only a row still at one of them, so optimistic concurrency holds under
concurrent requests without a read-then-write race. No row changed means the row is
out of reach (404) or was changed by someone else (412); one extra SELECT tells which.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.exceptions import NotFoundError, PreconditionFailedError
from app.models.base import VersionedMixin

Row = TypeVar("Row", bound=VersionedMixin)

# `version` is a 32-bit INTEGER on PostgreSQL: a larger number can never match (and
# would be an out-of-range parameter rather than a mismatch).
MAX_VERSION = 2**31 - 1


def stale(noun: str) -> PreconditionFailedError:
    return PreconditionFailedError(
        f"The {noun.lower()} has changed since it was read; fetch it again."
    )


def check_version(row: VersionedMixin, expected: Collection[int] | None, noun: str) -> None:
    """412 unless `row` is at one of the `expected` versions (None: any version)."""
    if expected is not None and row.version not in expected:
        raise stale(noun)


async def conditional_update(
    session: AsyncSession,
    model: type[Row],
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
    *,
    expected: Collection[int] | None,
    noun: str,
) -> Row:
    """UPDATE the one row matching `where` and bump its version; the row as written.
    `NotFoundError` when no row matches, `PreconditionFailedError` when one does but at
    none of the `expected` versions."""
    version: Any = col(model.version)
    versioned = list(where)
    if expected is not None:
        versioned.append(version.in_([v for v in expected if 0 < v <= MAX_VERSION]))
    statement = (
        update(model)
        .where(*versioned)
        .values(**values, version=version + 1)
        .returning(model)
        # The session may already hold this row: return the values just written.
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    row: Row | None = (await session.exec(statement)).scalars().first()
    if row is not None:
        return row
    exists = select(version).where(*where)
    if expected is not None and (await session.exec(exists)).first() is not None:
        raise stale(noun)
    raise NotFoundError(f"{noun} not found.")
