"""The `items` table: the reference resource (tenant-scoped, soft-deleted, versioned)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import JSON, Enum, Index, Text
from sqlmodel import Field

from app.models.base import BaseTable, SoftDeleteMixin, purgeable


class ItemStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


@purgeable
class Item(BaseTable, SoftDeleteMixin, table=True):
    """Something a tenant (or, without a tenant, a single user) keeps track of."""

    __tablename__: ClassVar[str] = "items"
    # Listing filters on the scope (tenant, or owner without a tenant) and pages through
    # (created_at, id) or (title, id): one index per path, scope first.
    __table_args__ = (
        Index("ix_items_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_items_tenant_id_title_id", "tenant_id", "title", "id"),
        Index("ix_items_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_items_owner_id_title_id", "owner_id", "title", "id"),
    )
    # Read database-set columns back in the INSERT itself (RETURNING), not lazily later.
    __mapper_args__: ClassVar[dict[str, object]] = {"eager_defaults": True}

    tenant_id: str | None = Field(default=None, max_length=255)
    owner_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_type=Text)
    status: ItemStatus = Field(
        default=ItemStatus.DRAFT,
        sa_type=Enum(
            ItemStatus,
            name="item_status",
            native_enum=False,
            length=16,
            values_callable=lambda enum: [member.value for member in enum],
            validate_strings=True,
        ),
    )
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    version: int = Field(default=1)
