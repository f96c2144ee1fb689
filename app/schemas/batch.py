"""Batch request/response models."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, computed_field, model_validator
from pydantic_core import PydanticCustomError

from app.domain import BatchStatus, DetailStatus, ErrorCode
from app.schemas.common import NO_NUL, TEXT_MAX, Id, StrictModel
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
    "creator_name": "Mia Manager",
    "source": "api",
    "params": {"decision": "approve", "comment": "ok"},
    "filter": {"definition_key": "expense", "node_id": "manager"},
    "total": 300,
    "skipped_rows": 0,
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
    "title": "Travel to Lyon",
    "row": None,
    "status": "failed",
    "error": "Category must be one of travel, meals, other",
    "error_code": "validation",
    "retryable": False,
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
    creator_name: str | None = Field(
        None,
        description="The creator's name, as people know them; null in the progress "
        "events, which name the creator by ``creator_id`` only.",
    )
    source: BatchSource
    params: dict[str, Any]
    filter: dict[str, Any] | None
    total: int
    skipped_rows: int = Field(
        0,
        description="An imported template's rows left undecided (blank Decision): "
        "skipped, not items of the batch.",
    )
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
    title: str | None = Field(
        None,
        description="What a person knows the item by (its process's title); null for an "
        "item the batch's creator cannot see.",
    )
    row: int | None
    status: DetailStatus
    error: str | None
    error_code: ErrorCode | None = Field(
        description="Why it failed, as a stable word (null unless failed)."
    )
    retryable: bool | None = Field(
        description="Whether running it again could change anything: true only for "
        "`transient` and `locked` (null unless failed). Automatic retries take only these."
    )
    retry_count: int
    payload: dict[str, Any] | None
    finished_at: datetime | None


GroupMessage = Annotated[
    str,
    Field(
        max_length=TEXT_MAX,
        pattern=NO_NUL,
        description="A failure group's ``message`` (the error sentence with the item's "
        "own id as ``N``), exactly as ``GET /batches/{id}/failures`` returned it.",
        examples=["The process of task N is suspended, not active."],
    ),
]


class RetryRequest(StrictModel):
    """``POST /batches/{id}/retry``: every failed item (no body), the listed ``item_ids``,
    or one failure group (``error_code``, optionally narrowed by its ``message``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"item_ids": [45, 46]},
                {
                    "error_code": "wrong_state",
                    "message": "The process of task N is suspended, not active.",
                },
            ]
        }
    )

    item_ids: list[Id] | None = Field(default=None, max_length=1_000_000)
    error_code: ErrorCode | None = Field(
        default=None, description="Retry the failed items of this code (a failure group)."
    )
    message: GroupMessage | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> RetryRequest:
        if self.message is not None and self.error_code is None:
            raise ValueError("message needs error_code: a group is (error_code, message)")
        if self.item_ids is not None and self.error_code is not None:
            raise ValueError("give item_ids or a failure group (error_code), not both")
        return self


FAILURES_EXAMPLE: dict[str, Any] = {
    "total_failed": 100,
    "groups": [
        {
            "error_code": "wrong_state",
            "message": "The process of task N is suspended, not active.",
            "count": 97,
            "retryable": False,
            "sample_item_ids": [45, 46, 47, 51, 52, 60, 61, 62, 70, 71],
        },
        {
            "error_code": "locked",
            "message": "Task N is locked by batch 5.",
            "count": 3,
            "retryable": True,
            "sample_item_ids": [48, 49, 50],
        },
    ],
    "groups_truncated": False,
}


class FailureGroup(BaseModel):
    """Failed items alike: same code, same sentence once the item's own id is ``N``."""

    error_code: ErrorCode = Field(description="Legacy failures without a code are `internal`.")
    message: str = Field(description="The error sentence with the item's own id replaced by N.")
    count: int
    retryable: bool
    sample_item_ids: list[int] = Field(
        max_length=10, description="The group's first ≤ 10 item ids, in detail order."
    )


class FailureGroupsOut(BaseModel):
    """A batch's failures grouped, largest group first (ties: by message)."""

    model_config = ConfigDict(json_schema_extra={"examples": [FAILURES_EXAMPLE]})

    total_failed: int = Field(description="Every failed item of the batch, in all groups.")
    groups: list[FailureGroup] = Field(max_length=50)
    groups_truncated: bool = Field(
        False, description="True when there were more than the 50 groups returned."
    )


class RetryOut(BaseModel):
    batch: BatchOut
    requeued: int
    exhausted: int


class Problem(BaseModel):
    """One item a dry run predicts will not succeed."""

    item_id: int
    title: str | None = Field(
        None, description="The item's title; null for an item the caller cannot see."
    )
    status: Literal["failed", "ignored"]
    error: str | None
    error_code: ErrorCode | None = Field(None, description="Why, as a stable word.")


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
