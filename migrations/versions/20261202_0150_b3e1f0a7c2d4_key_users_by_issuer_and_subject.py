"""key users by issuer and subject

Rows created before this revision have no issuer: the first login of the same provider
and subject adopts the row and records its issuer (see `app.services.users`).

Revision ID: b3e1f0a7c2d4
Revises: 5c6381dfbb00
Create Date: 2026-12-02 01:50:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "b3e1f0a7c2d4"
down_revision: str | None = "5c6381dfbb00"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("issuer", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=True)
        )
        batch_op.drop_constraint(batch_op.f("uq_users_provider_subject"), type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_users_subject_issuer"), ["subject", "issuer"]
        )


def downgrade() -> None:
    # The old key cannot hold two identities that share a provider and subject (two
    # issuers behind one provider name): refuse rather than delete one and its items.
    clashes = op.get_bind().scalar(
        sa.text(
            "SELECT count(*) FROM (SELECT provider, subject FROM users "
            "GROUP BY provider, subject HAVING count(*) > 1) AS clashes"
        )
    )
    if clashes:
        raise RuntimeError(
            f"{clashes} provider/subject pairs belong to more than one issuer; merge or "
            "remove those users before downgrading below revision b3e1f0a7c2d4"
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_subject_issuer"), type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_users_provider_subject"), ["provider", "subject"]
        )
        batch_op.drop_column("issuer")
