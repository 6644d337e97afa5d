"""Users: the row behind each authenticated principal, and the profile a user may edit."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, bindparam, or_, update
from sqlalchemy import select as select_rows
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.core.accounts import AccountStatusCache
from app.core.direct import DirectStatement
from app.core.security import Principal
from app.models.base import utcnow, uuid7
from app.models.user import User
from app.schemas.user import UserUpdate

# How stale `last_seen_at` may get before a read request refreshes it: the authenticated
# read path must not write on every request.
LAST_SEEN_RESOLUTION = timedelta(minutes=5)
MAX_DISPLAY_NAME = 100


def _identity_clause(users: Table) -> ColumnElement[bool]:
    # The identity's row, or a row from before issuers were recorded that its first login
    # adopts: one index lookup on (subject, issuer) either way.
    legacy = and_(users.c.issuer.is_(None), users.c.provider == bindparam("provider"))
    return and_(
        users.c.subject == bindparam("subject"),
        or_(users.c.issuer == bindparam("issuer"), legacy),
    )


# Built once: SQLAlchemy then reuses their compiled forms and cache keys on every request.
@functools.cache
def _by_identity() -> SelectOfScalar[User]:
    return select(User).where(_identity_clause(User.__table__))  # type: ignore[attr-defined]


@functools.cache
def _identity_rows() -> DirectStatement[Select[Any]]:
    # The same query in SQLAlchemy Core, for the read path: no session, no identity map,
    # on PostgreSQL not even SQLAlchemy's execution layer.
    users: Table = User.__table__  # type: ignore[attr-defined]
    return DirectStatement(select_rows(users).where(_identity_clause(users)))


async def find_user(session: AsyncSession, principal: Principal) -> User | None:
    """The principal's row (one SELECT): keyed by issuer and subject, else an issuer-less
    row of the same provider and subject waiting to be adopted (`issuer` is then None)."""
    params = {
        "issuer": principal.issuer,
        "subject": principal.subject,
        "provider": principal.provider,
    }
    rows = (await session.exec(_by_identity(), params=params)).all()
    return min(rows, key=lambda row: row.issuer is None, default=None)


async def lookup_user(connection: AsyncConnection, principal: Principal) -> User | None:
    """`find_user` on a bare connection: the authenticated read path's one round trip.
    The row comes back as a detached `User` (reading it is all the caller does)."""
    params = {
        "issuer": principal.issuer,
        "subject": principal.subject,
        "provider": principal.provider,
    }
    rows = await _identity_rows().all(connection, params)
    row = min(rows, key=lambda row: row["issuer"] is None, default=None)
    return None if row is None else User.from_row(row)


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
        "issuer": principal.issuer,
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
        .on_conflict_do_nothing(index_elements=["subject", "issuer"])
    )
    # A concurrent first request may insert the same identity: then this is a no-op.
    await session.exec(statement)


async def _adopt(session: AsyncSession, user: User, principal: Principal) -> User | None:
    """Record the issuer on an issuer-less row, once: None when another login (of this or
    another issuer) adopted it first."""
    statement = (
        update(User)
        .where(col(User.id) == user.id, col(User.issuer).is_(None))
        .values(issuer=principal.issuer)
        .returning(User)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    adopted: User | None = (await session.exec(statement)).scalars().first()
    return adopted


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


def is_up_to_date(user: User, principal: Principal, now: datetime) -> bool:
    """True when `get_or_create_user` would not write: the row is keyed by the issuer
    and either deactivated or holding the token's claims and a recent `last_seen_at`."""
    if user.issuer is None:
        return False
    if user.is_deleted:
        return True
    return (
        (principal.email is None or user.email == principal.email)
        and user.tenant_id == principal.tenant_id
        and user.last_seen_at is not None
        and now - user.last_seen_at < LAST_SEEN_RESOLUTION
    )


async def _find_or_insert(session: AsyncSession, principal: Principal, now: datetime) -> User:
    user = await find_user(session, principal)
    if user is not None and user.issuer is None:
        user = await _adopt(session, user, principal) or await find_user(session, principal)
    if user is None or user.issuer is None:
        await _insert_if_missing(session, principal, now)
        user = await find_user(session, principal)
        assert user is not None  # noqa: S101  (inserted above or by a concurrent request)
    return user


async def get_or_create_user(session: AsyncSession, principal: Principal) -> User:
    """The principal's user row (in a write transaction), created on first use, adopted
    when it predates issuers, refreshed when claims changed.

    An UPDATE only when the email or tenant changed or `last_seen_at` is older than
    `LAST_SEEN_RESOLUTION`; a deactivated row is returned as it is (callers refuse it).
    """
    now = utcnow()
    user = await _find_or_insert(session, principal, now)
    if not user.is_deleted and _refresh(user, principal, now):
        session.add(user)
        await session.flush()
    return user


def remember_status(accounts: AccountStatusCache, user: User) -> None:
    """Tell this process's cache whether the row's identity may call the API."""
    if user.issuer is not None:
        accounts.remember(user.issuer, user.subject, active=not user.is_deleted)


async def update_profile(session: AsyncSession, user: User, changes: UserUpdate) -> User:
    """Apply the fields a user may change about themselves (one UPDATE of that row)."""
    values = changes.model_dump(exclude_unset=True)
    if not values:
        return user
    statement = (
        update(User)
        .where(col(User.id) == user.id)
        .values(**values)
        .returning(User)
        .execution_options(synchronize_session=False)
    )
    updated: User = (await session.exec(statement)).scalars().one()
    return updated
