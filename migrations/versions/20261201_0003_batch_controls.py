"""operator controls: batches.start_at (scheduled start), targets_resolved (a scheduled
filter is resolved at start), max_items_per_second and rate_next_at (rate limit)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("start_at", app.db.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("targets_resolved", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("max_items_per_second", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rate_next_at", sa.Float(), nullable=True))
        batch_op.create_index("ix_batches_status_start_at", ["status", "start_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_status_start_at")
        batch_op.drop_column("rate_next_at")
        batch_op.drop_column("max_items_per_second")
        batch_op.drop_column("targets_resolved")
        batch_op.drop_column("start_at")
