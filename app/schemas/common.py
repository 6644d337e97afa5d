"""Schemas shared by every endpoint: the error body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None
    details: Any = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail
