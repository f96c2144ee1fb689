"""single sign-on hardening: ``users.oidc_claims_iat`` and ``sessions.expires_at``

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11

``users.oidc_claims_iat``: the ``iat`` (seconds since the epoch) of the newest token
whose role, department and name were applied to the user, so an older token that is
still valid cannot put back a role the provider has since taken away. Null for users
made with a ``bd_`` token and for single-sign-on users until their next token.

``sessions.expires_at``: when a browser session ends whatever its activity — the ID
token's ``exp`` for a session opened through the provider, so it does not keep the role
it signed in with for ``BATCH_SESSION_MAX_AGE``; null for a token sign-in (only the
idle and absolute timeouts apply, as before).

Both nullable columns added with ``ADD COLUMN``: no table rebuild on SQLite, no rewrite
on PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("users", sa.Column("oidc_claims_iat", BIG_INT, nullable=True))
    op.add_column(
        "sessions",
        sa.Column("expires_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("sessions", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("oidc_claims_iat")
