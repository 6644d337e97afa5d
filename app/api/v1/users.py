"""The caller's own profile."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ActiveAccount, CurrentPrincipal, CurrentUser, SessionDep
from app.api.responses import ModelResponse
from app.core.security import Principal
from app.models.user import User
from app.schemas.user import UserRead, UserUpdate
from app.services.users import update_profile

router = APIRouter(prefix="/users", tags=["users"], dependencies=[ActiveAccount])


def _profile(user: User, principal: Principal) -> UserRead:
    return UserRead(**user.model_dump(), roles=sorted(principal.roles))


@router.get("/me", response_model=UserRead)
async def read_my_profile(
    user: CurrentUser, principal: CurrentPrincipal
) -> ModelResponse[UserRead]:
    """The caller's profile, created from the token's claims on first use."""
    return ModelResponse(_profile(user, principal))


@router.patch("/me", response_model=UserRead)
async def update_my_profile(
    changes: UserUpdate, user: CurrentUser, principal: CurrentPrincipal, session: SessionDep
) -> UserRead:
    """Change the caller's own profile (display name)."""
    user = await update_profile(session, user, changes)
    return _profile(user, principal)
