"""Conditional updates: one UPDATE statement that checks the row's version itself.

`If-Match` (app/api/preconditions.py) gives the versions a client accepts; the UPDATE
matches only a row still at one of them, so optimistic concurrency holds under
concurrent requests without a read-then-write race. No row changed means the row is
out of reach (404) or was changed by someone else (412); one extra SELECT tells which.
The common shapes (plain values, at most one accepted version, the store's own
clauses) are built once and run as `DirectStatement`s.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, Table, Update, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.direct import DirectStatement, fetch_all
from app.core.exceptions import NotFoundError, PreconditionFailedError

# `version` is a 32-bit INTEGER on PostgreSQL: a larger number can never match (and
# would be an out-of-range parameter rather than a mismatch).
MAX_VERSION = 2**31 - 1
# Built UPDATE statements by shape; a caller building new clauses per call is not
# cached beyond this many shapes (its statements are simply built each time).
MAX_SHAPES = 256
_ShapeKey = tuple[Table, tuple[ColumnElement[bool], ...], tuple[str, ...], bool]
_shapes: dict[_ShapeKey, DirectStatement[Update]] = {}


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
) -> dict[str, Any]:
    """UPDATE the one row matching `where` (its bound parameters filled from `params`),
    bump its version and return the row as written, by column name. `NotFoundError`
    when no row matches, `PreconditionFailedError` when one does but at none of the
    `expected` versions."""
    version = table.c.version
    accepted = None if expected is None else [v for v in expected if 0 < v <= MAX_VERSION]
    statement = _prepared(table, where, values, accepted)
    if statement is not None:
        bound = {**params, **{f"new_{name}": value for name, value in values.items()}}
        if accepted:
            bound["expected_version"] = accepted[0]
        rows = await statement.all(connection, bound)
    else:
        clauses = list(where)
        bound = dict(params)
        if accepted is not None:
            clauses.append(version.in_(bindparam("expected_versions", expanding=True)))
            bound["expected_versions"] = accepted
        changed = update(table).where(*clauses).values(**values, version=version + 1)
        rows = await fetch_all(connection, changed.returning(table), bound)
    if rows:
        return rows[0]
    exists = select(version).where(*where)
    if expected is not None and (await connection.execute(exists, dict(params))).first():
        raise stale(noun)
    raise NotFoundError(f"{noun} not found.")


def _prepared(
    table: Table,
    where: Sequence[ColumnElement[bool]],
    values: Mapping[str, Any],
    accepted: list[int] | None,
) -> DirectStatement[Update] | None:
    """The UPDATE for this shape, built once: plain values (bound, not SQL expressions),
    at most one accepted version, and clauses the caller keeps (a tuple, as the store's
    are). None for anything else."""
    if not isinstance(where, tuple) or (accepted is not None and len(accepted) != 1):
        return None
    if any(isinstance(value, ClauseElement) for value in values.values()):
        return None
    key = (table, where, tuple(sorted(values)), accepted is not None)
    statement = _shapes.get(key)
    if statement is None:
        version = table.c.version
        clauses = list(where)
        if accepted is not None:
            clauses.append(version == bindparam("expected_version"))
        changes: dict[str, Any] = {name: bindparam(f"new_{name}") for name in key[2]}
        built = update(table).where(*clauses).values(**changes, version=version + 1)
        statement = DirectStatement(built.returning(table))
        if len(_shapes) < MAX_SHAPES:
            _shapes[key] = statement
    return statement
