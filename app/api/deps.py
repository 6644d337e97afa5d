"""Dependency aliases for handlers: `SessionDep`, `CurrentPrincipal`, `CurrentUser`,
`JobsDep`, `CacheDep`, ..."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Depends, Request

from app.core.accounts import AccountStatusCache
from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import ReadConnectionDep, ReadSessionDep, SessionDep, session_context
from app.core.exceptions import PermissionDeniedError
from app.core.health import ReadinessProbe
from app.core.pagination import CursorCodec
from app.core.security import CurrentPrincipal, OptionalPrincipal, Principal, require_roles
from app.integrations.storage import Storage
from app.jobs.enqueue import JobsDep, JobStatusDep
from app.models.base import utcnow
from app.models.user import User
from app.services.users import get_or_create_user, is_up_to_date, lookup_user, remember_status


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_cache(request: Request) -> Cache:
    cache: Cache = request.state.cache
    return cache


async def get_readiness_probe(request: Request) -> ReadinessProbe:
    probe: ReadinessProbe = request.state.readiness
    return probe


async def get_cursor_codec(request: Request) -> CursorCodec:
    codec: CursorCodec = request.state.cursor_codec
    return codec


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.state.storage
    return storage


def job_owner(principal: Principal) -> str:
    """How a job records who asked for it (checked when its status is read): the
    identity (issuer and subject) and the tenant it acted for, so a caller moved to
    another tenant no longer reaches jobs (and exports) made with the old one."""
    return json.dumps([principal.issuer, principal.subject, principal.tenant_id])


async def _load_user(request: Request, principal: Principal) -> User:
    """The caller's row as it stands: one SELECT on a read connection (back to the pool
    at once), plus a short write transaction only when the row is missing, predates
    issuers, or needs its claims or `last_seen_at` refreshed; concurrent requests of
    one caller share that write (`AccountStatusCache.refresh_once`)."""
    async with request.state.read_engine.connect() as connection:
        user = await lookup_user(connection, principal)
    if user is not None and is_up_to_date(user, principal, utcnow()):
        return user

    async def refresh() -> User:
        async with session_context(request.state.session_factory) as session:
            return await get_or_create_user(session, principal)

    accounts: AccountStatusCache = request.state.accounts
    claims = (principal.issuer, principal.subject, principal.tenant_id, principal.email)
    return await accounts.refresh_once(claims, refresh)


def _refuse_if_deactivated(accounts: AccountStatusCache, user: User) -> User:
    remember_status(accounts, user)
    if user.is_deleted:
        raise PermissionDeniedError("This account has been deactivated.")
    return user


async def get_current_user(principal: CurrentPrincipal, request: Request) -> User:
    """The caller's `users` row, created on first use (401 without a valid token, 403
    when the account is deactivated). Loaded once per request, however many
    dependencies ask for it."""
    scope = request.scope
    user: User | None = scope.get(_USER_KEY)
    if user is None:
        accounts: AccountStatusCache = request.state.accounts
        user = _refuse_if_deactivated(accounts, await _load_user(request, principal))
        scope[_USER_KEY] = user
    return user


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_USER_KEY = "app.current_user"  # the request's `users` row, in its ASGI scope


async def require_active_account(principal: CurrentPrincipal, request: Request) -> None:
    """403 for a deactivated account, on every authenticated route (routers take it as a
    dependency). A write checks the caller's row at once (and brings it up to date, as
    `CurrentUser` does); a read is answered from this process's cache while it is fresh,
    otherwise by one lookup, which does not create a row for a caller that has none."""
    if request.method not in _SAFE_METHODS:
        await get_current_user(principal, request)
        return
    accounts: AccountStatusCache = request.state.accounts
    active = accounts.get(principal.issuer, principal.subject)
    if active is True:
        return
    if active is False:
        raise PermissionDeniedError("This account has been deactivated.")
    async with request.state.read_engine.connect() as connection:
        user = await lookup_user(connection, principal)
    if user is not None and user.issuer is None:  # adopt it before anything reads by issuer
        async with session_context(request.state.session_factory) as session:
            user = await get_or_create_user(session, principal)
    if user is None:
        accounts.remember(principal.issuer, principal.subject, active=True)
        return
    _refuse_if_deactivated(accounts, user)


ActiveAccount = Depends(require_active_account)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness_probe)]
CurrentUser = Annotated[User, Depends(get_current_user)]
CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]
StorageDep = Annotated[Storage, Depends(get_storage)]

__all__ = [
    "ActiveAccount",
    "CacheDep",
    "CurrentPrincipal",
    "CurrentUser",
    "CursorCodecDep",
    "JobStatusDep",
    "JobsDep",
    "OptionalPrincipal",
    "Principal",
    "ReadConnectionDep",
    "ReadSessionDep",
    "ReadinessDep",
    "SessionDep",
    "SettingsDep",
    "job_owner",
    "require_roles",
]
