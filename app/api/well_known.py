"""`/.well-known/jwks.json`: the local issuer's public keys (AUTH_PROVIDER=local only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.core.exceptions import NotFoundError
from app.core.security import TokenVerifier

router = APIRouter(tags=["auth"])


@router.get("/.well-known/jwks.json")
async def read_jwks(request: Request) -> Response:
    """The JSON Web Key Set that verifies tokens printed by `make token`."""
    verifier: TokenVerifier = request.state.verifier
    if verifier.published_jwks is None:
        raise NotFoundError("This API does not issue tokens.")
    return Response(
        verifier.published_jwks,
        media_type="application/jwk-set+json",
        headers={"cache-control": "public, max-age=300"},
    )
