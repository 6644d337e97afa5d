"""The `job_outbox` table: jobs committed with a request's writes, not yet on the queue.

A job enqueued from a transaction is written here in that same transaction. After the
commit it is sent to the queue and its row deleted; a periodic relay sends whatever a
crash or a queue outage left behind. A committed job therefore runs at least once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, func
from sqlmodel import Field, SQLModel

from app.models.base import UTCDateTime


class OutboxJob(SQLModel, table=True):
    __tablename__: ClassVar[str] = "job_outbox"

    id: str = Field(primary_key=True, max_length=128)  # the job id clients are given
    function: str = Field(max_length=100)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # args and kwargs
    defer_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = Field(default=0)
    created_at: datetime = Field(
        default=None,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
        index=True,
    )
