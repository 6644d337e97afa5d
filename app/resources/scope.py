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
from sqlalchemy import ColumnElement, Table, and_, bindparam, select

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

    @property
    def by_tenant(self) -> bool:
        return self.tenant_id is not None

    @staticmethod
    def clause(table: Table, *, by_tenant: bool) -> ColumnElement[bool]:
        """The scope filter on `table` with bound parameters that `params()` fills: a
        statement using it is built once and runs for every caller."""
        names = ("scope_tenant", "scope_issuer", "scope_subject")
        return _filter(table, by_tenant, *(bindparam(name) for name in names))

    def params(self) -> dict[str, str]:
        if self.tenant_id is not None:
            return {"scope_tenant": self.tenant_id}
        return {"scope_issuer": self.issuer, "scope_subject": self.subject}

    def where(self, model: type[OwnedMixin]) -> ColumnElement[bool]:
        """The WHERE clause keeping `model`'s rows to this scope, values included."""
        table: Table = model.__table__  # type: ignore[attr-defined]
        return _filter(table, self.by_tenant, self.tenant_id, self.issuer, self.subject)

    def key(self, prefix: str, row_id: uuid.UUID) -> str:
        """A cache key for one row as this scope sees it."""
        if self.tenant_id is not None:
            return f"{prefix}:t:{self.tenant_id}:{row_id}"
        # The issuer's length first: an issuer may contain ":", the key stays unambiguous.
        return f"{prefix}:u:{len(self.issuer)}:{self.issuer}:{self.subject}:{row_id}"


def _filter(
    table: Table, by_tenant: bool, tenant: object, issuer: object, subject: object
) -> ColumnElement[bool]:
    if by_tenant:
        return table.c.tenant_id == tenant
    users = User.__table__  # type: ignore[attr-defined]
    owner = select(users.c.id).where(users.c.subject == subject, users.c.issuer == issuer)
    return and_(table.c.tenant_id.is_(None), table.c.owner_id == owner.scalar_subquery())


async def get_owner_scope(principal: CurrentPrincipal) -> OwnerScope:
    return OwnerScope.of(principal)


ScopeDep = Annotated[OwnerScope, Depends(get_owner_scope)]
