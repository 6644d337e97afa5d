"""Table models. Import every model here so Alembic and `init_db` see all tables."""

from app.models.base import BaseTable, SoftDeleteMixin

__all__ = ["BaseTable", "SoftDeleteMixin"]
