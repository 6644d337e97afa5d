"""Unauthenticated health probes for orchestrators and load balancers."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app import __version__
from app.api.deps import ReadinessDep
from app.api.responses import ModelResponse
from app.schemas.health import Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"])

_NO_STORE = {"cache-control": "no-store"}
_LIVE = Liveness(status="ok", version=__version__)


@router.get("", response_model=Liveness)
async def liveness() -> ModelResponse[Liveness]:
    """Liveness: the process is up and serving. No I/O."""
    return ModelResponse(_LIVE)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A required component is down."}},
)
async def readiness(probe: ReadinessDep) -> ModelResponse[Readiness]:
    """Readiness: database and Redis status per component; 503 when a required one is down."""
    report = await probe.check()
    status_code = 503 if report.status == "unavailable" else 200
    return ModelResponse(Readiness.model_validate(asdict(report)), status_code, _NO_STORE)
