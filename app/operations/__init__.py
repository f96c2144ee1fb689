"""Operation types. Each module declares its params model and its chunk function and
registers itself; importing this package registers them all."""

from app.operations import instances, tasks  # noqa: F401
from app.operations.registry import OPERATIONS, BatchRun, Operation, WorkItem, get_operation

__all__ = ["OPERATIONS", "BatchRun", "Operation", "WorkItem", "get_operation"]
