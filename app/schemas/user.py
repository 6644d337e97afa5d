"""User profile bodies: what `GET /users/me` returns and what `PATCH /users/me` accepts."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import Timestamp

# No control characters (C0 and C1; NUL above all, which PostgreSQL refuses): the same
# rule the token claims follow. Lone surrogates never get this far (not valid strings).
DisplayName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    Field(pattern=r"^[^\x00-\x1f\x7f-\x9f]+$", examples=["Ada Lovelace"]),
]


class UserRead(BaseModel):
    """The caller's profile; `roles` come from the current token, not from storage."""

    id: uuid.UUID
    provider: str
    subject: str
    email: str | None
    display_name: str | None
    tenant_id: str | None
    roles: list[str]
    last_seen_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class UserUpdate(BaseModel):
    """Fields a user may change about themselves; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    display_name: DisplayName | None = None
