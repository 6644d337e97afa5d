"""Table models. Import every model here so Alembic and `init_db` see all tables."""

from app.models.base import BaseTable, SoftDeleteMixin
from app.models.item import Item, ItemStatus
from app.models.user import User

__all__ = ["BaseTable", "Item", "ItemStatus", "SoftDeleteMixin", "User"]
