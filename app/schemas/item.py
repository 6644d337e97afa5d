"""Item request and response bodies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from app.models.item import ItemStatus
from app.schemas.common import PageParams, PartialUpdate, Timestamp

MAX_TAGS = 20
# PostgreSQL cannot store NUL in text at all; a title or a search term has no use for
# any other control character either.
_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
_NO_NUL = r"^[^\x00]*$"


def _unique_tags(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC; one that does not exist there (year 0 or 10000) is invalid."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range", "must fall between years 1 and 9999 in UTC"
        ) from None


Title = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_CONTROL_CHARACTERS
    ),
]
Description = Annotated[str, StringConstraints(max_length=5000, pattern=_NO_NUL)]
SearchTerm = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROL_CHARACTERS)
]


def _iso_8601_only(value: object) -> object:
    """Refuse numbers (and numeric strings), which pydantic would read as Unix times: a
    client sending `created_before=1700000000` almost certainly meant something else."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise PydanticCustomError(
            "datetime_format", "must be an ISO 8601 date-time with a time zone"
        )
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only), AfterValidator(_in_utc)]
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


class ItemUpdate(PartialUpdate):
    """A partial update: only the fields present are changed (`description: null` clears it)."""

    not_null = ("title", "status", "tags")

    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    status: ItemStatus | SkipJsonSchema[None] = None
    tags: Tags | SkipJsonSchema[None] = None


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
    created_at: Timestamp
    updated_at: Timestamp


class ItemListParams(PageParams):
    """Query parameters of `GET /items`."""

    status: ItemStatus | None = None
    q: SearchTerm | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None
    sort: Literal["created_at", "-created_at", "title", "-title"] = "-created_at"


class ItemExportParams(BaseModel):
    """Filters of an export (the list filters without paging)."""

    model_config = ConfigDict(extra="forbid")

    status: ItemStatus | None = None
    q: SearchTerm | None = None
    created_after: Instant | None = None
    created_before: Instant | None = None
