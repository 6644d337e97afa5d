"""Schemas shared by every endpoint: the error body, a page of results, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, Field

T = TypeVar("T")


def _whole_seconds_utc(value: datetime) -> datetime:
    # SQLite stores whole seconds, PostgreSQL microseconds: responses carry whole seconds
    # in UTC on both (`2026-01-31T12:00:00Z`), so clients see one format.
    return value.astimezone(UTC).replace(microsecond=0)


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
