"""Conditional updates: one UPDATE statement that checks the row's version itself.

`If-Match` (app/api/preconditions.py) gives the versions a client accepts; the UPDATE
matches only a row still at one of them, so optimistic concurrency holds under
concurrent requests without a read-then-write race. No row changed means the row is
out of reach (404) or was changed by someone else (412); one extra SELECT tells which.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.exceptions import NotFoundError, PreconditionFailedError

# `version` is a 32-bit INTEGER on PostgreSQL: a larger number can never match (and
# would be an out-of-range parameter rather than a mismatch).
MAX_VERSION = 2**31 - 1


def stale(noun: str) -> PreconditionFailedError:
    return PreconditionFailedError(
        f"The {noun.lower()} has changed since it was read; fetch it again."
    )


def check_version(version: int, expected: Collection[int] | None, noun: str) -> None:
    """412 unless `version` is one of the `expected` versions (None: any version)."""
    if expected is not None and version not in expected:
        raise stale(noun)


async def conditional_update(
    connection: AsyncConnection,
    table: Table,
    where: Sequence[ColumnElement[bool]],
    values: Mapping[str, Any],
    *,
    params: Mapping[str, Any],
    expected: Collection[int] | None,
    noun: str,
) -> Row[Any]:
    """UPDATE the one row matching `where` (its bound parameters filled from `params`),
    bump its version and return the row as written. `NotFoundError` when no row
    matches, `PreconditionFailedError` when one does but at none of the `expected`
    versions."""
    version = table.c.version
    clauses = list(where)
    bound = dict(params)
    if expected is not None:
        clauses.append(version.in_(bindparam("expected_versions", expanding=True)))
        bound["expected_versions"] = [v for v in expected if 0 < v <= MAX_VERSION]
    statement = update(table).where(*clauses).values(**values, version=version + 1).returning(table)
    row: Row[Any] | None = (await connection.execute(statement, bound)).first()
    if row is not None:
        return row
    exists = select(version).where(*where)
    if expected is not None and (await connection.execute(exists, dict(params))).first():
        raise stale(noun)
    raise NotFoundError(f"{noun} not found.")
