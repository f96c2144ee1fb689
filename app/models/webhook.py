"""Webhook subscriptions and their deliveries (the outbox).

A delivery row is written in the transaction of the state change it reports, so a
committed change always has its notification; the row is then sent after the commit
and kept as the delivery log (``app/webhooks``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, BigId, JsonType, UTCDateTime, utcnow
from app.models.ids import NO_ID_REUSE


class WebhookSubscription(Base):
    __tablename__ = "webhook_subscriptions"
    __table_args__ = (Index("ix_webhook_subscriptions_owner", "owner_id", "id"), NO_ID_REUSE)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str] | None] = mapped_column(JsonType)
    """The event types to send; null: every type."""
    all_batches: Mapped[bool] = mapped_column(default=False)
    """Every batch's events, not only the owner's (admins only)."""
    status: Mapped[str] = mapped_column(String(16), default="active")
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(100))
    """``whsec_…``: kept readable, because every delivery is signed with it."""
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    """Deliveries given up in a row; ``DISABLE_AFTER`` disables the subscription."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: the signed message (``msg_id`` is the
    ``webhook-id`` of every attempt, ``body`` the exact bytes sent) and its attempts."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_subscription", "subscription_id", "id"),
        Index("ix_webhook_deliveries_batch", "batch_id", "id"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    # No foreign key: the log outlives a purged batch.
    batch_id: Mapped[int | None]
    event: Mapped[str] = mapped_column(String(40))
    msg_id: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the next attempt is due (pending); while an attempt is in flight, when it
    counts as lost and may be taken again."""
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
