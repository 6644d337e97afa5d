"""Health probe bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Liveness(BaseModel):
    status: Literal["ok"]
    version: str


class ComponentHealth(BaseModel):
    status: Literal["up", "down", "disabled"]
    latency_ms: float | None = None
    error: str | None = None


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    components: dict[str, ComponentHealth]
