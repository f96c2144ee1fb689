"""seed lanes: batch_seed_claims (a page of a filter batch's items claimed by a seed lane
and not yet seeded)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batch_seed_claims",
        sa.Column("batch_id", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("after_id", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("until_id", BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "after_id", name=op.f("pk_batch_seed_claims")),
    )


def downgrade() -> None:
    op.drop_table("batch_seed_claims")
