"""The caller's own profile."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import ActiveAccount, CurrentPrincipal, CurrentUser, SessionDep
from app.core.security import Principal
from app.models.user import User
from app.schemas.common import ErrorResponse
from app.schemas.user import UserRead, UserUpdate
from app.services.users import update_profile

router = APIRouter(prefix="/users", tags=["users"], dependencies=[ActiveAccount])

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, invalid or expired token."},
    403: {"model": ErrorResponse, "description": "The account is deactivated."},
    503: {"model": ErrorResponse, "description": "The identity provider is unreachable."},
}


def _profile(user: User, principal: Principal) -> UserRead:
    return UserRead(**user.model_dump(), roles=sorted(principal.roles))


@router.get("/me", response_model=UserRead, responses=_AUTH_ERRORS)
async def read_my_profile(user: CurrentUser, principal: CurrentPrincipal) -> UserRead:
    """The caller's profile, created from the token's claims on first use."""
    return _profile(user, principal)


@router.patch(
    "/me",
    response_model=UserRead,
    responses={**_AUTH_ERRORS, 422: {"model": ErrorResponse, "description": "Invalid body."}},
)
async def update_my_profile(
    changes: UserUpdate, user: CurrentUser, principal: CurrentPrincipal, session: SessionDep
) -> UserRead:
    """Change the caller's own profile (display name)."""
    user = await update_profile(session, user, changes)
    return _profile(user, principal)
