"""Dependency aliases for handlers: `SessionDep`, `CurrentPrincipal`, `CurrentUser`,
`JobsDep`, `CacheDep`, ..."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Depends, Request

from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import ReadSessionDep, SessionDep, session_context
from app.core.health import ReadinessProbe
from app.core.pagination import CursorCodec
from app.core.security import CurrentPrincipal, OptionalPrincipal, Principal, require_roles
from app.jobs.enqueue import JobQueueDep, JobsDep
from app.models.user import User
from app.services.users import get_or_create_user


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
    codec: CursorCodec = request.app.state.cursor_codec
    return codec


def job_owner(principal: Principal) -> str:
    """How a job records who asked for it (checked when its status is read): the
    identity and the tenant it acted for, so a caller moved to another tenant no longer
    reaches jobs (and exports) made with the old one."""
    return json.dumps([principal.provider, principal.subject, principal.tenant_id])


async def get_current_user(principal: CurrentPrincipal, request: Request) -> User:
    """The caller's `users` row, created on first use (401 without a valid token).

    Looked up in a short read session whose connection goes back to the pool at once,
    so the handler's own session is the only one the request holds.
    """
    async with session_context(request.state.read_session_factory) as session:
        return await get_or_create_user(session, principal)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness_probe)]
CurrentUser = Annotated[User, Depends(get_current_user)]
CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]

__all__ = [
    "CacheDep",
    "CurrentPrincipal",
    "CurrentUser",
    "CursorCodecDep",
    "JobQueueDep",
    "JobsDep",
    "OptionalPrincipal",
    "Principal",
    "ReadSessionDep",
    "ReadinessDep",
    "SessionDep",
    "SettingsDep",
    "job_owner",
    "require_roles",
]
