"""item attachments: files attached to an item, their bytes in file storage

Revision ID: 89cd772bf7f6
Revises: b3e1f0a7c2d4
Create Date: 2026-12-02 14:59:46.605488+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.models.base


revision: str = "89cd772bf7f6"
down_revision: str | None = "b3e1f0a7c2d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "item_attachments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            app.models.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            app.models.base.UTCDateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("item_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("content_type", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
            name=op.f("fk_item_attachments_item_id_items"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_attachments")),
    )
    with op.batch_alter_table("item_attachments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_item_attachments_item_id"), ["item_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("item_attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_item_attachments_item_id"))

    op.drop_table("item_attachments")
