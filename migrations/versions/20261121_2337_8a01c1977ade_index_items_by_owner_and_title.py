"""index items by owner and title: tenant-less callers page by title without a sort

Revision ID: 8a01c1977ade
Revises: d78c36b45920
Create Date: 2026-11-21 23:37:53.341345+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "8a01c1977ade"
down_revision: str | None = "d78c36b45920"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_items_owner_id_title_id", ["owner_id", "title", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_owner_id_title_id")
