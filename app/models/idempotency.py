"""The `idempotency_keys` table: the first response to a POST sent with an `Idempotency-Key`.

A record is written in the same transaction as whatever the request created, so a
key is either stored together with its effects or not at all, whatever happens to
Redis or to the process. The primary key (caller-and-route scope, key) makes a second
request with the same key unable to commit a second set of effects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Column, Text, func
from sqlmodel import Field, SQLModel

from app.models.base import UTCDateTime


class IdempotencyRecord(SQLModel, table=True):
    __tablename__: ClassVar[str] = "idempotency_keys"

    scope: str = Field(primary_key=True, max_length=64)  # sha256 of caller and route
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)  # sha256 of the request body
    status_code: int
    headers: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default=None,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
        index=True,
    )
