"""The `items` table: the reference resource (tenant-scoped, soft-deleted, versioned)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from sqlalchemy import JSON, Text
from sqlmodel import Field

from app.models.base import ScopedTable, purgeable, scope_indexes, string_enum


class ItemStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


@purgeable
class Item(ScopedTable, table=True):
    """Something a tenant (or, without a tenant, a single user) keeps track of."""

    __tablename__: ClassVar[str] = "items"
    # Listing pages through (created_at, id) or (title, id) within a scope.
    __table_args__ = scope_indexes("items", "created_at", "title")

    title: str = Field(max_length=200)
    description: str | None = Field(default=None, sa_type=Text)
    status: ItemStatus = Field(
        default=ItemStatus.DRAFT, sa_type=string_enum(ItemStatus, "item_status")
    )
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
