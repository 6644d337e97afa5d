"""Whose rows a caller reaches: the tenant/owner scope every resource query carries.

A token naming a tenant reaches that tenant's rows; a token without one reaches only
its own tenant-less rows, the owner being the `users` row of the token's issuer and
subject. A row outside the scope does not exist as far as the caller can tell (404,
never 403). Handlers take `ScopeDep`; `ScopedStore` puts `scope.where(Model)` on
every statement it builds, so a resource built on it cannot forget the filter.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from sqlalchemy import ColumnElement, and_
from sqlmodel import col, select

from app.core.security import CurrentPrincipal, Principal
from app.models.base import OwnedMixin
from app.models.user import User


@dataclass(frozen=True, slots=True)
class OwnerScope:
    tenant_id: str | None
    issuer: str
    subject: str

    @classmethod
    def of(cls, principal: Principal) -> OwnerScope:
        return cls(principal.tenant_id, principal.issuer, principal.subject)

    def where(self, model: type[OwnedMixin]) -> ColumnElement[bool]:
        """The WHERE clause keeping `model`'s rows to this scope."""
        if self.tenant_id is not None:
            return col(model.tenant_id) == self.tenant_id
        owner = select(col(User.id)).where(
            col(User.subject) == self.subject, col(User.issuer) == self.issuer
        )
        return and_(col(model.tenant_id).is_(None), col(model.owner_id) == owner.scalar_subquery())

    def key(self, prefix: str, row_id: uuid.UUID) -> str:
        """A cache key for one row as this scope sees it."""
        if self.tenant_id is not None:
            return f"{prefix}:t:{self.tenant_id}:{row_id}"
        # The issuer's length first: an issuer may contain ":", the key stays unambiguous.
        return f"{prefix}:u:{len(self.issuer)}:{self.issuer}:{self.subject}:{row_id}"


async def get_owner_scope(principal: CurrentPrincipal) -> OwnerScope:
    return OwnerScope.of(principal)


ScopeDep = Annotated[OwnerScope, Depends(get_owner_scope)]
