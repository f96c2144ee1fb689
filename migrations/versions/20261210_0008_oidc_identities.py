"""single sign-on: ``users.oidc_issuer`` and ``oidc_subject``, unique together

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10

Both null for every existing user (they sign in with their bd_ token as before); a
user created by a verified OpenID Connect token carries its issuer and subject. A
unique index (not a constraint) so SQLite needs no table rebuild; rows with nulls never
collide.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("oidc_issuer", sa.String(length=500), nullable=True))
    op.add_column("users", sa.Column("oidc_subject", sa.String(length=255), nullable=True))
    op.create_index("uq_users_oidc_identity", "users", ["oidc_issuer", "oidc_subject"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_oidc_identity", table_name="users")
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("oidc_subject")
        batch.drop_column("oidc_issuer")
