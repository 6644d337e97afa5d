"""initial: the baseline every later revision builds on (no tables yet)

Revision ID: 9254ff32fe68
Revises:
Create Date: 2026-11-21 22:27:31.804504+00:00
"""

from collections.abc import Sequence

revision: str = "9254ff32fe68"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
