"""The `users` table: one row per identity (issuer + subject) that has called the API."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from app.models.base import BaseTable, SoftDeleteMixin, UTCDateTime


class User(BaseTable, SoftDeleteMixin, table=True):
    """A caller known to the API, created and refreshed from token claims."""

    __tablename__: ClassVar[str] = "users"
    # An identity is the token's issuer and subject (a provider name says nothing about
    # which IdP it points at). Subject first: lookups also match an issuer-less row.
    __table_args__ = (UniqueConstraint("subject", "issuer"),)
    # Fetch database-set columns (updated_at) in the UPDATE itself, so they can be read
    # after a flush without an implicit (and, in async code, impossible) lazy load.
    __mapper_args__: ClassVar[dict[str, object]] = {"eager_defaults": True}

    provider: str = Field(max_length=32)
    # NULL on rows created before issuers were recorded, until their first login adopts them.
    issuer: str | None = Field(default=None, max_length=512)
    subject: str = Field(max_length=255)
    email: str | None = Field(default=None, max_length=320)
    display_name: str | None = Field(default=None, max_length=100)
    tenant_id: str | None = Field(default=None, max_length=255, index=True)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
