"""Batch request/response models (DESIGN.md §4)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from app.schemas.common import DbInt, Id, StrictModel
from app.schemas.engine import UtcDatetime

Priority = Literal["high", "normal", "low"]


class TaskFilter(StrictModel):
    """A ``task.approve`` filter: the caller's pending tasks matching all given fields."""

    definition_key: str | None = Field(default=None, max_length=100)
    node_id: str | None = Field(default=None, max_length=100)
    keyword: str | None = Field(default=None, max_length=200)
    department_id: DbInt | None = None


class InstanceFilter(StrictModel):
    """An instance-operation filter: visible instances matching all given fields."""

    definition_key: str | None = Field(default=None, max_length=100)
    status: Literal["active", "suspended", "completed", "rejected", "terminated"] | None = None
    keyword: str | None = Field(default=None, max_length=200)
    department_id: DbInt | None = None
    business_key: str | None = Field(default=None, max_length=200)
    """Exact match on the instance's business key."""
    started_after: UtcDatetime | None = None
    """Instances created at or after this moment (ISO 8601 with an offset)."""
    started_before: UtcDatetime | None = None
    """Instances created strictly before this moment (ISO 8601 with an offset)."""


class BatchCreate(StrictModel):
    type: str = Field(max_length=50)
    ids: list[Id] | None = None
    filter: dict[str, Any] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = "normal"
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
    max_items_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    """A ceiling on this batch's throughput across every worker."""
    dry_run: bool = False
    """Check every target as the operation would and answer with the prediction (200):
    nothing is written."""


class BatchOut(BaseModel):
    """The batch object (DESIGN.md §4), read straight from the ORM row; ``pending``,
    ``running`` and ``progress`` are derived from the counters."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    status: str
    priority: str
    creator_id: int
    source: str
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
    model_config = ConfigDict(from_attributes=True)

    id: int
    item_id: int
    row: int | None
    status: str
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


class ArchiveFilter(StrictModel):
    """An ``instance.archive_delete`` filter: archived instances the caller may purge."""

    definition_key: str | None = Field(default=None, max_length=100)


class Problem(BaseModel):
    """One item a dry run predicts will not succeed."""

    item_id: int
    status: Literal["failed", "ignored"]
    error: str | None


class DryRunOut(BaseModel):
    """What a batch would do (DESIGN.md §4 ``dry_run``): predicted counts and the first
    ≤ 100 problems; nothing was written."""

    dry_run: Literal[True] = True
    type: str
    total: int
    success: int
    failed: int
    ignored: int
    problems: list[Problem]
