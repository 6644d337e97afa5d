"""Schemas shared by every endpoint: the error body, a page of results, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T")
# Long enough for a cursor on a 200-character title of 4-byte characters.
MAX_CURSOR_LENGTH = 2048


def _whole_seconds_utc(value: datetime) -> datetime:
    # SQLite stores whole seconds, PostgreSQL microseconds: responses carry whole seconds
    # in UTC on both (`2026-01-31T12:00:00Z`), so clients see one format.
    # Both drivers hand back UTC already: then only the microseconds go.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(microsecond=0) if value.microsecond else value


Timestamp = Annotated[datetime, AfterValidator(_whole_seconds_utc)]
"""A response timestamp: UTC, whole seconds."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None
    details: Any = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    """One page of a list; pass `next_cursor` as `cursor` to get the next one."""

    items: list[T]
    next_cursor: str | None = Field(description="Opaque; null on the last page.")
    total: int | None = Field(
        default=None, description="Rows matching the filters; only with include_total=true."
    )


class PageParams(BaseModel):
    """The query parameters of every list; a resource's list adds `sort` (a `Literal`
    of its `Sorts` names) and its filters."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=MAX_CURSOR_LENGTH)
    include_total: bool = False


class PartialUpdate(BaseModel):
    """A PATCH body: only the fields sent change. Every field defaults to None, meaning
    "not sent"; a field named in `not_null` refuses an explicit null (declare it as
    `X | SkipJsonSchema[None] = None`, so the schema shows it non-nullable), and any
    other field is cleared by null."""

    model_config = ConfigDict(extra="forbid")
    not_null: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _refuse_null(self) -> Self:
        for name in self.not_null:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise PydanticCustomError("null_not_allowed", f"{name} may not be null")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields sent, by name."""
        return self.model_dump(exclude_unset=True)
