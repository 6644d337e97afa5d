"""The `subscriptions` table: each Stripe subscription as the last event said it was.

Rows are written only by the webhook handler (app/services/subscriptions.py). The
tenant and user come from the subscription's metadata, which the app sets when it
creates the checkout session (`metadata={"tenant_id": ..., "user_id": ...}`).
`last_event_at` is the `created` time of the event the row reflects: an older event
arriving late never moves the row back.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import ClassVar

from sqlmodel import Field

from app.models.base import BaseTable, UTCDateTime


class Subscription(BaseTable, table=True):
    __tablename__: ClassVar[str] = "subscriptions"

    stripe_subscription_id: str = Field(max_length=255, unique=True)
    stripe_customer_id: str = Field(max_length=255, index=True)
    tenant_id: str | None = Field(default=None, max_length=255, index=True)
    user_id: uuid.UUID | None = Field(
        default=None, foreign_key="users.id", ondelete="SET NULL", index=True
    )
    status: str = Field(max_length=32)
    price_id: str | None = Field(default=None, max_length=255)
    current_period_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancel_at_period_end: bool = Field(default=False)
    last_event_at: datetime = Field(sa_type=UTCDateTime)
