"""Webhook events: each verified event stored once, then processed by a job through a
registry of handlers.

`record_event` inserts the event and tells whether it was new, in the request's
transaction; the endpoint queues `process_webhook_event` only for a new one, in that
same transaction (through the job outbox), so an event is stored and queued together
or not at all, and a redelivery, even a concurrent one, is stored and processed once.

A handler is `async def handler(session, event)` registered with
`@handles("stripe", "customer.subscription.updated", ...)`. It runs in the job's
transaction together with the event's status change: both commit, or neither does and
the job is retried. Handlers must tolerate a redelivered or out-of-order event
(app/services/subscriptions.py shows how).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models.base import utcnow, uuid7
from app.models.webhook_event import WebhookEvent, WebhookStatus

Handler = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]
TABLE: Table = WebhookEvent.__table__  # type: ignore[attr-defined]
MAX_ERROR_LENGTH = 2000
_handlers: dict[tuple[str, str], Handler] = {}


def handles(provider: str, *types: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of these event types."""

    def register(handler: Handler) -> Handler:
        for event_type in types:
            _handlers[(provider, event_type)] = handler
        return handler

    return register


def handler_for(provider: str, event_type: str) -> Handler | None:
    return _handlers.get((provider, event_type))


async def record_event(
    session: AsyncSession, provider: str, event: dict[str, Any]
) -> uuid.UUID | None:
    """Store a verified event; the new row's id, or None if it was stored before."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(TABLE)
        .values(
            id=uuid7(),
            provider=provider,
            event_id=event["id"],
            type=event["type"],
            payload=event,
            status=WebhookStatus.RECEIVED,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(TABLE.c.id)
    )
    connection = await session.connection()
    row = (await connection.execute(statement)).first()
    return None if row is None else row.id


async def process_event(session: AsyncSession, row_id: uuid.UUID) -> WebhookStatus:
    """Claim the event, run its handler and mark it `processed` (`ignored` when its type
    has none), all in `session`'s transaction; a handler's exception propagates (the
    caller records it with `record_failure`).

    The claim is an UPDATE of a `received` row: a second job for the same event (a
    replay while the first still runs) waits for the first to finish on PostgreSQL's
    row lock, or SQLite's write lock, and then finds nothing to claim. An event not
    `received` is left alone and its status returned."""
    connection = await session.connection()
    claimed = (
        await connection.execute(
            update(TABLE)
            .where(TABLE.c.id == row_id, TABLE.c.status == WebhookStatus.RECEIVED)
            .values(attempts=TABLE.c.attempts + 1)
            .returning(TABLE.c.provider, TABLE.c.type, TABLE.c.payload)
        )
    ).first()
    if claimed is None:
        status = await connection.scalar(select(TABLE.c.status).where(TABLE.c.id == row_id))
        if status is None:
            raise LookupError(f"no webhook event {row_id}")
        return WebhookStatus(status)
    handler = handler_for(claimed.provider, claimed.type)
    if handler is not None:
        await handler(session, claimed.payload)
    status = WebhookStatus.PROCESSED if handler is not None else WebhookStatus.IGNORED
    await connection.execute(
        update(TABLE)
        .where(TABLE.c.id == row_id)
        .values(status=status, error=None, processed_at=utcnow())
    )
    return status


async def record_failure(
    session: AsyncSession, row_id: uuid.UUID, error: str, *, final: bool
) -> None:
    """Count a failed try of a `received` event and keep its error; after the last
    one the event is `failed`. An event another job has settled meanwhile is left
    alone."""
    values: dict[str, Any] = {"attempts": TABLE.c.attempts + 1, "error": error[:MAX_ERROR_LENGTH]}
    if final:
        values["status"] = WebhookStatus.FAILED
    connection = await session.connection()
    await connection.execute(
        update(TABLE)
        .where(TABLE.c.id == row_id, TABLE.c.status == WebhookStatus.RECEIVED)
        .values(**values)
    )


async def events_to_replay(
    session: AsyncSession,
    *,
    event_ids: Collection[str] = (),
    failed: bool = False,
    stuck_before: datetime | None = None,
) -> list[uuid.UUID]:
    """Put failed events back to `received` and return them with the `received`
    events that need a job again: the failed ones (`failed=True`), the named ones
    (provider ids) that failed or are still `received`, and those `received` before
    `stuck_before` (a job lost to a timeout, a crash or a commit that failed). Events
    already processed or ignored are never run again."""
    connection = await session.connection()
    chosen_failed: list[ColumnElement[bool]] = []
    if failed:
        chosen_failed.append(TABLE.c.status == WebhookStatus.FAILED)
    if event_ids:
        chosen_failed.append(
            and_(TABLE.c.status == WebhookStatus.FAILED, TABLE.c.event_id.in_(list(event_ids)))
        )
    row_ids: list[uuid.UUID] = []
    if chosen_failed:
        reset = await connection.execute(
            update(TABLE)
            .where(or_(*chosen_failed))
            .values(status=WebhookStatus.RECEIVED)
            .returning(TABLE.c.id)
        )
        row_ids.extend(row.id for row in reset)
    pending: list[ColumnElement[bool]] = []
    if event_ids:
        pending.append(TABLE.c.event_id.in_(list(event_ids)))
    if stuck_before is not None:
        pending.append(TABLE.c.received_at < stuck_before)
    if pending:
        waiting = await connection.execute(
            select(TABLE.c.id).where(TABLE.c.status == WebhookStatus.RECEIVED, or_(*pending))
        )
        row_ids.extend(row.id for row in waiting if row.id not in row_ids)
    return row_ids
