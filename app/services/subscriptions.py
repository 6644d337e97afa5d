"""The reference webhook handler: Stripe subscriptions into the `subscriptions` table.

One statement per event, an upsert that only writes when the event is newer than the
one the row reflects (`last_event_at`, from the event's `created`). Stripe does not
deliver in order, and redelivers: an old `customer.subscription.updated` arriving
after a newer one, or after `customer.subscription.deleted`, changes nothing.
Events of one second are ordered by the subscription's lifecycle instead: `active`
after `incomplete` (Stripe often sends `created` and `updated` in one second), and a
final status after everything.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Table, and_, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.models.base import uuid7
from app.models.subscription import Subscription
from app.models.user import User
from app.services.webhooks import handles

TABLE: Table = Subscription.__table__  # type: ignore[attr-defined]
SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)
# Statuses after which a subscription does not come back (a new one is created).
_FINAL = ("canceled", "incomplete_expired")


def _stage(status: ColumnElement[str]) -> ColumnElement[int]:
    """Where a status stands in a subscription's life: 0 before the first payment,
    1 while it runs (active, trialing, past_due, unpaid, paused), 2 once it ended."""
    return case((status.in_(_FINAL), 2), (status == "incomplete", 0), else_=1)


def _timestamp(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else None


def _user(value: object) -> ScalarSelect[uuid.UUID] | None:
    """The user the metadata names, if that user exists (NULL otherwise, in SQL: a
    deleted or unknown user never fails the event)."""
    try:
        user_id = uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
    if user_id is None:
        return None
    return select(col(User.id)).where(col(User.id) == user_id).scalar_subquery()


def _values(event: dict[str, Any]) -> dict[str, Any]:
    subscription: dict[str, Any] = event["data"]["object"]
    metadata = subscription.get("metadata") or {}
    items = (subscription.get("items") or {}).get("data") or [{}]
    first = items[0] if isinstance(items[0], dict) else {}
    # Newer API versions keep the period on each item, older ones on the subscription.
    period_end = subscription.get("current_period_end", first.get("current_period_end"))
    customer = subscription.get("customer")
    return {
        "stripe_subscription_id": str(subscription["id"]),
        "stripe_customer_id": str(customer.get("id") if isinstance(customer, dict) else customer),
        "tenant_id": str(metadata["tenant_id"])[:255] if metadata.get("tenant_id") else None,
        "user_id": _user(metadata.get("user_id")),
        "status": str(subscription.get("status", "unknown"))[:32],
        "price_id": (first.get("price") or {}).get("id"),
        "current_period_end": _timestamp(period_end),
        "cancel_at_period_end": bool(subscription.get("cancel_at_period_end", False)),
        "last_event_at": datetime.fromtimestamp(event["created"], UTC),
    }


@handles("stripe", *SUBSCRIPTION_EVENTS)
async def apply_subscription_event(session: AsyncSession, event: dict[str, Any]) -> None:
    """Insert or update the subscription the event describes, unless the row already
    reflects a newer event (or one of the same second further in the lifecycle)."""
    values = _values(event)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(TABLE).values(id=uuid7(), **values)
    incoming = statement.excluded
    newer = or_(
        TABLE.c.last_event_at < incoming.last_event_at,
        and_(
            TABLE.c.last_event_at == incoming.last_event_at,
            _stage(TABLE.c.status) < _stage(incoming.status),
        ),
    )
    changes = {name: incoming[name] for name in values if name != "stripe_subscription_id"}
    changes["updated_at"] = func.now()  # `onupdate` does not apply to an upsert
    statement = statement.on_conflict_do_update(
        index_elements=["stripe_subscription_id"], set_=changes, where=newer
    )
    connection = await session.connection()
    await connection.execute(statement)
