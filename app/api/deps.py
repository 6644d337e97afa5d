"""Dependency aliases for handlers: `SessionDep`, `CacheDep`, `JobsDep`, `ReadinessDep`, ..."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.cache import Cache
from app.core.config import Settings
from app.core.db import SessionDep
from app.core.health import ReadinessProbe
from app.jobs.enqueue import JobQueueDep, JobsDep


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_cache(request: Request) -> Cache:
    cache: Cache = request.state.cache
    return cache


async def get_readiness_probe(request: Request) -> ReadinessProbe:
    probe: ReadinessProbe = request.state.readiness
    return probe


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness_probe)]

__all__ = ["CacheDep", "JobQueueDep", "JobsDep", "ReadinessDep", "SessionDep", "SettingsDep"]
