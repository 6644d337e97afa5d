"""Unauthenticated health probes for orchestrators and load balancers."""

from __future__ import annotations

import json
from dataclasses import asdict

from fastapi import APIRouter
from fastapi.responses import Response

from app import __version__
from app.api.deps import ReadinessDep
from app.schemas.health import Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"])

_NO_STORE = {"cache-control": "no-store"}
_LIVENESS_BODY = json.dumps({"status": "ok", "version": __version__}).encode()


@router.get("", response_model=Liveness)
async def liveness() -> Response:
    """Liveness: the process is up and serving. No I/O."""
    return Response(_LIVENESS_BODY, media_type="application/json")


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A required component is down."}},
)
async def readiness(probe: ReadinessDep) -> Response:
    """Readiness: database and Redis status per component; 503 when a required one is down."""
    report = await probe.check()
    body = json.dumps(asdict(report)).encode()
    status_code = 503 if report.status == "unavailable" else 200
    return Response(body, status_code, headers=_NO_STORE, media_type="application/json")
