"""webhooks: subscriptions and their deliveries (the outbox)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10

A delivery row is written in the transaction of the batch state change it reports and
sent after the commit; it stays as the delivery log.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("owner_id", BIG_ID, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("events", JSON, nullable=True),
        sa.Column("all_batches", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("consecutive_failures", BIG_ID, nullable=False),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_webhook_subscriptions_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_subscriptions_owner", "webhook_subscriptions", ["owner_id", "id"], unique=False
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("subscription_id", BIG_ID, nullable=False),
        sa.Column("batch_id", BIG_ID, nullable=True),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", BIG_ID, nullable=False),
        sa.Column("last_status_code", BIG_ID, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("first_attempt_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", app.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_webhook_deliveries_msg_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_deliveries_subscription",
        "webhook_deliveries",
        ["subscription_id", "id"],
        unique=False,
    )
    op.create_index(
        "ix_webhook_deliveries_batch", "webhook_deliveries", ["batch_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_batch", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_subscription", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_subscriptions_owner", table_name="webhook_subscriptions")
    op.drop_table("webhook_subscriptions")
