"""Soups store their merge's per-unit mixing weights (``soups.mixing``); older soups get {}.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("soups", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mixing", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("soups", schema=None) as batch_op:
        batch_op.drop_column("mixing")
