"""Batch request/response models."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, computed_field
from pydantic_core import PydanticCustomError

from app.domain import BatchStatus, DetailStatus
from app.schemas.common import Id, StrictModel
from app.schemas.engine import UtcDatetime
from app.schemas.filters import ARCHIVE_FILTERS, INSTANCE_FILTERS, TASK_FILTERS

TYPE_MAX = 50
"""The longest batch type name accepted."""


class Priority(enum.StrEnum):
    """Which queue a batch's jobs go to: ``high`` work is never starved by ``low`` bulk work."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class BatchSource(enum.StrEnum):
    """Where a batch came from: the JSON API or an imported Excel template."""

    API = "api"
    EXCEL = "excel"


class OperationType(enum.StrEnum):
    """The built-in operation types. The registry may hold more: a custom
    type registered at run time is accepted and returned as a plain string, which is why
    every ``type`` field is ``OperationType | string`` (an open enum) rather than this
    enum alone. ``tests/test_openapi.py`` keeps this list equal to the built-ins."""

    TASK_APPROVE = "task.approve"
    INSTANCE_SUSPEND = "instance.suspend"
    INSTANCE_RESUME = "instance.resume"
    INSTANCE_TERMINATE = "instance.terminate"
    INSTANCE_COMPLETE = "instance.complete"
    INSTANCE_DELETE = "instance.delete"
    INSTANCE_ARCHIVE_DELETE = "instance.archive_delete"
    INSTANCE_SET_VARIABLES = "instance.set_variables"
    INSTANCE_MIGRATE = "instance.migrate"


def _type_name(value: Any) -> Any:
    """Check a requested type's shape before the open-enum union sees it, so a bad value
    is one error located at ``type`` (not one per union member). Whether the type is
    registered is the service's question (422 ``unknown batch type``)."""
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    if len(value) > TYPE_MAX:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_length} characters",
            {"max_length": TYPE_MAX},
        )
    return value


TypeName = Annotated[
    OperationType | Annotated[str, Field(max_length=TYPE_MAX)],
    BeforeValidator(_type_name),
    Field(
        description=(
            "An operation type: one of the built-ins, or a custom type registered on this server."
        ),
        examples=["task.approve"],
    ),
]
"""A batch type as documented: a built-in ``OperationType`` or any registered custom
type (a plain string)."""


if TYPE_CHECKING:  # built at run time, so to mypy they are what they derive from
    TaskFilter = StrictModel
    InstanceFilter = StrictModel
    ArchiveFilter = StrictModel
else:
    TaskFilter = TASK_FILTERS.body_model(
        "TaskFilter",
        "A ``task.approve`` filter: the caller's pending tasks matching all given fields.",
    )
    InstanceFilter = INSTANCE_FILTERS.body_model(
        "InstanceFilter",
        "An instance-operation filter: visible instances matching all given fields.",
    )
    ArchiveFilter = ARCHIVE_FILTERS.body_model(
        "ArchiveFilter",
        "An ``instance.archive_delete`` filter: archived instances the caller may purge.",
    )


BATCH_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "type": "task.approve",
    "status": "running",
    "priority": "normal",
    "creator_id": 2,
    "source": "api",
    "params": {"decision": "approve", "comment": "ok"},
    "filter": {"definition_key": "expense", "node_id": "manager"},
    "total": 300,
    "pending": 140,
    "running": 0,
    "success": 150,
    "failed": 8,
    "ignored": 2,
    "cancelled": 0,
    "progress": 0.5333,
    "chunk_size": 100,
    "max_retries": 3,
    "failure_threshold": 0.5,
    "created_at": "2026-04-09T08:00:00Z",
    "started_at": "2026-04-09T08:00:01Z",
    "updated_at": "2026-04-09T08:00:05Z",
    "finished_at": None,
    "error_file": None,
    "progress_seq": 12,
    "start_at": None,
    "max_items_per_second": None,
}
"""The batch object, as documented on every batch response."""

DETAIL_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "item_id": 45,
    "row": None,
    "status": "failed",
    "error": "Category must be one of travel, meals, other",
    "retry_count": 0,
    "payload": None,
    "finished_at": "2026-04-09T08:00:04Z",
}


class BatchCreate(StrictModel):
    """``POST /api/v1/batches``: exactly one of ``ids`` / ``filter``."""

    type: TypeName
    ids: list[Id] | None = None
    filter: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    chunk_size: int | None = Field(default=None, ge=1, le=10_000)
    max_retries: int | None = Field(default=None, ge=0, le=100)
    failure_threshold: float | None = Field(default=None, gt=0, le=1)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """Same as the ``Idempotency-Key`` header."""
    start_suspended: bool = False
    """Create the batch ``suspended`` (like S3 Batch Operations' confirmation step): its
    items are resolved and locked, but nothing runs until ``/activate``."""
    start_at: UtcDatetime | None = None
    """Start later (ISO 8601 with an offset, in the future, at most 30 days ahead): the
    batch is ``scheduled`` until then; a filter is resolved when it starts."""
    max_items_per_second: float | None = Field(default=None, ge=0.1, le=1_000_000)
    """A ceiling on this batch's throughput across every worker (at least 0.1 items/s, so
    no executor waits longer than a job may run)."""
    dry_run: bool = False
    """Check every target as the operation would and answer with the prediction (200):
    nothing is written."""


class BatchOut(BaseModel):
    """The batch object, read straight from the ORM row; ``pending``,
    ``running`` and ``progress`` are derived from the counters."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [BATCH_EXAMPLE]})

    id: int
    type: TypeName
    status: BatchStatus
    priority: Priority
    creator_id: int
    source: BatchSource
    params: dict[str, Any]
    filter: dict[str, Any] | None
    total: int
    success: int
    failed: int
    ignored: int
    cancelled: int
    chunk_size: int
    max_retries: int
    failure_threshold: float | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    error_file: str | None
    progress_seq: int = Field(description="Monotonic progress sequence (the SSE event id).")
    start_at: datetime | None = None
    max_items_per_second: float | None = None

    @property
    def _finished(self) -> int:
        return self.success + self.failed + self.ignored + self.cancelled

    @computed_field  # type: ignore[prop-decorator]
    @property
    def running(self) -> int:
        """Always 0: a chunk is claimed and applied in one transaction, so items in flight
        are pending to every reader until their chunk commits."""
        return 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def pending(self) -> int:
        return max(self.total - self._finished, 0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        """Finished / total; 1.0 for an empty batch."""
        return round(self._finished / self.total, 4) if self.total else 1.0


class DetailOut(BaseModel):
    """One item of a batch and what happened to it."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [DETAIL_EXAMPLE]}
    )

    id: int
    item_id: int
    row: int | None
    status: DetailStatus
    error: str | None
    retry_count: int
    payload: dict[str, Any] | None
    finished_at: datetime | None


class RetryRequest(StrictModel):
    item_ids: list[Id] | None = Field(default=None, max_length=1_000_000)


class RetryOut(BaseModel):
    batch: BatchOut
    requeued: int
    exhausted: int


class Problem(BaseModel):
    """One item a dry run predicts will not succeed."""

    item_id: int
    status: Literal["failed", "ignored"]
    error: str | None


class DryRunOut(BaseModel):
    """What a batch would do (``dry_run``): predicted counts and the first
    ≤ 100 problems; nothing was written."""

    dry_run: Literal[True] = True
    type: TypeName
    total: int
    success: int
    failed: int
    ignored: int
    problems: list[Problem]
