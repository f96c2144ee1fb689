"""failures that explain themselves: ``batch_details.error_code`` and ``retryable``;
partial templates: ``batches.skipped_rows``

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09

Both are null except on failed details (a success writes nothing more than before).
Details that failed before this revision get ``internal`` / retryable, so the retry
cron treats them as it always did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch_details", sa.Column("error_code", sa.String(length=32), nullable=True))
    op.add_column("batch_details", sa.Column("retryable", sa.Boolean(), nullable=True))
    op.add_column(
        "batches",
        sa.Column(
            "skipped_rows",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            server_default="0",
        ),
    )
    op.execute(
        "UPDATE batch_details SET error_code = 'internal', retryable = TRUE WHERE status = 'failed'"
    )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("skipped_rows")
    with op.batch_alter_table("batch_details") as batch:
        batch.drop_column("retryable")
        batch.drop_column("error_code")
