"""Item request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.models.item import ItemStatus

MAX_TAGS = 20


def _unique_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=5000)]
Tag = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=40, pattern=r"^[\w.:-]+$"),
]
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_unique_tags)]


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Description | None = None
    status: ItemStatus = ItemStatus.DRAFT
    tags: Tags = Field(default_factory=list)


class ItemUpdate(BaseModel):
    """A partial update: only the fields present are changed (`description: null` clears it)."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None
    status: ItemStatus | None = None
    tags: Tags | None = None

    @model_validator(mode="after")
    def _required_fields_are_not_null(self) -> Self:
        for name in ("title", "status", "tags"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise PydanticCustomError("null_not_allowed", f"{name} may not be null")
        return self

    def changes(self) -> dict[str, object]:
        return self.model_dump(exclude_unset=True)


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: str | None
    owner_id: uuid.UUID
    title: str
    description: str | None
    status: ItemStatus
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


class ItemListParams(BaseModel):
    """Query parameters of `GET /items`."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=512)
    include_total: bool = False
    status: ItemStatus | None = None
    q: str | None = Field(default=None, min_length=1, max_length=200)
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
    sort: Literal["created_at", "-created_at", "title", "-title"] = "-created_at"


class ItemExportParams(BaseModel):
    """Filters of an export (the list filters without paging)."""

    model_config = ConfigDict(extra="forbid")

    status: ItemStatus | None = None
    q: str | None = Field(default=None, min_length=1, max_length=200)
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None
