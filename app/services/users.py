"""Users: the row behind each authenticated principal, and the profile a user may edit."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.core.exceptions import PermissionDeniedError
from app.core.security import Principal
from app.models.base import utcnow, uuid7
from app.models.user import User
from app.schemas.user import UserUpdate

# How stale `last_seen_at` may get before a read request refreshes it: the authenticated
# read path must not write on every request.
LAST_SEEN_RESOLUTION = timedelta(minutes=5)
MAX_DISPLAY_NAME = 100


@functools.cache
def _by_identity() -> SelectOfScalar[User]:
    # Built once: SQLAlchemy then reuses its compiled form and cache key on every request.
    return select(User).where(
        col(User.provider) == bindparam("provider"), col(User.subject) == bindparam("subject")
    )


async def _find(session: AsyncSession, principal: Principal) -> User | None:
    params = {"provider": principal.provider, "subject": principal.subject}
    return (await session.exec(_by_identity(), params=params)).first()


def _initial_display_name(principal: Principal) -> str | None:
    """The token's `name` claim, made printable and cut to the column's length."""
    name = principal.claims.get("name")
    if not isinstance(name, str):
        return None
    printable = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    return printable[:MAX_DISPLAY_NAME] or None


async def _insert_if_missing(session: AsyncSession, principal: Principal, now: datetime) -> None:
    values: dict[str, Any] = {
        "id": uuid7(),
        "provider": principal.provider,
        "subject": principal.subject,
        "email": principal.email,
        "display_name": _initial_display_name(principal),
        "tenant_id": principal.tenant_id,
        "last_seen_at": now,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(User)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "subject"])
    )
    # A concurrent first request may insert the same identity: then this is a no-op.
    await session.exec(statement)


def _refresh(user: User, principal: Principal, now: datetime) -> bool:
    """Copy changed claims onto the row; True when anything needs writing."""
    changed = False
    if principal.email is not None and user.email != principal.email:
        user.email = principal.email
        changed = True
    if user.tenant_id != principal.tenant_id:
        user.tenant_id = principal.tenant_id
        changed = True
    if changed or user.last_seen_at is None or now - user.last_seen_at >= LAST_SEEN_RESOLUTION:
        user.last_seen_at = now
        changed = True
    return changed


async def get_or_create_user(session: AsyncSession, principal: Principal) -> User:
    """The principal's user row, created on first use and refreshed when claims change.

    One SELECT when nothing changed; an UPDATE only when the email or tenant changed or
    `last_seen_at` is older than `LAST_SEEN_RESOLUTION`. Deactivated users get a 403.
    """
    now = utcnow()
    user = await _find(session, principal)
    if user is None:
        await _insert_if_missing(session, principal, now)
        user = await _find(session, principal)
        assert user is not None  # noqa: S101  (inserted above or by a concurrent request)
    if user.is_deleted:
        raise PermissionDeniedError("This account has been deactivated.")
    if _refresh(user, principal, now):
        session.add(user)
        await session.flush()
    return user


async def update_profile(session: AsyncSession, user: User, changes: UserUpdate) -> User:
    """Apply the fields a user may change about themselves."""
    for name, value in changes.model_dump(exclude_unset=True).items():
        setattr(user, name, value)
    session.add(user)
    await session.flush()
    return user
