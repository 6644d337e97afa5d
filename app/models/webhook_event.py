"""The `webhook_events` table: every verified event a provider delivered, stored once.

The unique (provider, event_id) pair is what makes a redelivery a no-op: the endpoint
inserts with ON CONFLICT DO NOTHING and queues processing only for a row it created.
`status` is `received` until a job processes it, then `processed` (its handler ran and
committed), `ignored` (no handler for its type) or `failed` (the handler kept failing:
`error` says why, `make webhooks-replay` runs it again).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Text, UniqueConstraint, func
from sqlmodel import Field, SQLModel

from app.models.base import UTCDateTime, string_enum, uuid7


class WebhookStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class WebhookEvent(SQLModel, table=True):
    __tablename__: ClassVar[str] = "webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: uuid.UUID = Field(default_factory=uuid7, primary_key=True)
    provider: str = Field(max_length=32)
    event_id: str = Field(max_length=255)
    type: str = Field(max_length=255, index=True)
    payload: dict[str, Any] = Field(sa_type=JSON)
    status: WebhookStatus = Field(
        default=WebhookStatus.RECEIVED,
        sa_type=string_enum(WebhookStatus, "webhook_status"),
        index=True,
    )
    attempts: int = Field(default=0)
    error: str | None = Field(default=None, sa_type=Text)
    received_at: datetime = Field(
        default=None,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
    )
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
