"""ORM models. Import from here so every table is registered on ``Base.metadata``."""

from app.models.batch import Batch, BatchDetail, SeedClaim, awaiting_auto_retry
from app.models.engine import (
    ActionLog,
    BrowserSession,
    InstanceArchive,
    MonitorGrant,
    ProcessDefinition,
    ProcessInstance,
    ProcessLog,
    Task,
    User,
)
from app.models.webhook import WebhookDelivery, WebhookSubscription

__all__ = [
    "ActionLog",
    "Batch",
    "BatchDetail",
    "BrowserSession",
    "SeedClaim",
    "InstanceArchive",
    "MonitorGrant",
    "ProcessDefinition",
    "ProcessInstance",
    "ProcessLog",
    "Task",
    "User",
    "WebhookDelivery",
    "WebhookSubscription",
    "awaiting_auto_retry",
]
