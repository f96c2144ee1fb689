"""The event vocabulary of webhooks: what a subscription may ask for."""

from __future__ import annotations

from enum import StrEnum


class WebhookEvent(StrEnum):
    BATCH_CREATED = "batch.created"
    BATCH_STARTED = "batch.started"
    BATCH_SUSPENDED = "batch.suspended"
    BATCH_RESUMED = "batch.resumed"
    BATCH_COMPLETED = "batch.completed"
    BATCH_ABORTED = "batch.aborted"
    BATCH_CANCELLED = "batch.cancelled"
    BATCH_FAILURES = "batch.failures"
    """The first failure of a batch run (the batch's ``failed`` count leaves 0)."""


PING = "webhook.ping"
"""Sent by ``POST /webhooks/{id}/ping`` only; every subscription receives it."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
