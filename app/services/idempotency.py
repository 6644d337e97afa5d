"""Idempotency records: the first response to a POST sent with an `Idempotency-Key`,
stored in the request's own transaction. No HTTP types here (app/api/idempotency.py
turns records into responses).

A request claims its (scope, key) before it does anything else and fills in its
response before the commit, so a key is committed together with whatever its
request created, or not at all. Until then the claim is invisible to other
transactions, and a second claim of the same key waits for the first to end.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models.base import utcnow
from app.models.idempotency import IdempotencyRecord

RECORD_TTL = timedelta(hours=24)


def expiry_cutoff() -> datetime:
    """Records created before this have expired: they are never replayed, may be
    replaced by a new claim and are removed by the purge job."""
    return utcnow() - RECORD_TTL


def _this(scope: str, key: str) -> tuple[Any, Any]:
    return col(IdempotencyRecord.scope) == scope, col(IdempotencyRecord.key) == key


async def find_record(session: AsyncSession, scope: str, key: str) -> IdempotencyRecord | None:
    """The live (unexpired) record of `key` in `scope`, as committed by its request."""
    live = col(IdempotencyRecord.created_at) >= expiry_cutoff()
    return (await session.exec(select(IdempotencyRecord).where(*_this(scope, key), live))).first()


async def claim(session: AsyncSession, scope: str, key: str, fingerprint: str) -> bool:
    """Hold `key` for this transaction; False when a live record already has it.

    One upsert: insert, or replace an expired record, or do nothing to a live one. A
    concurrent transaction holding the same key makes it wait (on the primary key)
    until that one commits (then False) or rolls back (then True). The response is
    filled in by `store_response` before the commit.
    """
    # Placeholders until `store_response`: nobody else can read them before the commit.
    values: dict[str, Any] = {
        "fingerprint": fingerprint,
        "status_code": 0,
        "headers": {},
        "body": "",
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(IdempotencyRecord)
        .values(scope=scope, key=key, **values)
        .on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={**values, "created_at": func.now()},
            where=col(IdempotencyRecord.created_at) < expiry_cutoff(),
        )
        .returning(col(IdempotencyRecord.key))
    )
    return (await session.exec(statement)).first() is not None


async def store_response(
    session: AsyncSession,
    scope: str,
    key: str,
    *,
    status_code: int,
    headers: dict[str, str],
    body: str,
) -> None:
    """Record the response of the request that claimed `key` (same transaction)."""
    values = {"status_code": status_code, "headers": headers, "body": body}
    await session.exec(update(IdempotencyRecord).where(*_this(scope, key)).values(**values))
