"""ORM models. Import from here so every table is registered on ``Base.metadata``."""

from app.models.batch import Batch, BatchDetail, SeedClaim
from app.models.engine import (
    ActionLog,
    InstanceArchive,
    MonitorGrant,
    ProcessDefinition,
    ProcessInstance,
    ProcessLog,
    Task,
    User,
)

__all__ = [
    "ActionLog",
    "Batch",
    "BatchDetail",
    "SeedClaim",
    "InstanceArchive",
    "MonitorGrant",
    "ProcessDefinition",
    "ProcessInstance",
    "ProcessLog",
    "Task",
    "User",
]
