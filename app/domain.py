"""The vocabulary every layer speaks: batch and detail statuses, the outcome of one item,
a claimed work item, the batch an operation runs for, and a wake-up message.

It imports nothing of the app (and no database library), so any module may use it
without pulling in a layer above. Behaviour that uses these words — the transition
table, who may move a batch — lives with its owner (``app.batches.state``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class BatchStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    CREATED = "created"
    SEEDING = "seeding"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"


class DetailStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    IGNORED = "ignored"
    CANCELLED = "cancelled"


FINAL: frozenset[BatchStatus] = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.ABORTED}
)
STARTING: frozenset[BatchStatus] = frozenset({BatchStatus.CREATED, BatchStatus.SEEDING})
"""Not yet running: details are still being made (or about to be)."""
RUNNABLE: frozenset[BatchStatus] = frozenset({BatchStatus.SEEDING, BatchStatus.RUNNING})
"""Executors claim chunks only in these states."""
SUSPENDABLE: frozenset[BatchStatus] = frozenset(
    {BatchStatus.SCHEDULED, BatchStatus.CREATED, BatchStatus.SEEDING, BatchStatus.RUNNING}
)
FINISHED_DETAILS: frozenset[DetailStatus] = frozenset(
    {DetailStatus.SUCCESS, DetailStatus.FAILED, DetailStatus.IGNORED, DetailStatus.CANCELLED}
)
OUTCOME_STATUSES: frozenset[DetailStatus] = frozenset(
    {DetailStatus.SUCCESS, DetailStatus.FAILED, DetailStatus.IGNORED}
)
"""What applying an item can lead to (pending, running and cancelled are the engine's)."""


def may_retry(retry_count: Any, max_retries: Any) -> Any:
    """A failed item that has retries left. Works on numbers and on SQL columns alike
    (``retry_count < max_retries``), so Python and SQL never disagree."""
    return retry_count < max_retries


@dataclass
class Outcome:
    """What happened to one item: ``success``, ``ignored`` or ``failed`` (+ why).

    ``error_code`` names the kind of failure (``not_found``, ``forbidden``,
    ``conflict``, ``locked``, ``invalid``, ``error``); ``retryable`` says whether running
    the item again could change anything."""

    status: DetailStatus
    error: str | None = None
    error_code: str | None = None
    fields: list[dict[str, Any]] | None = None
    retryable: bool = True

    def __post_init__(self) -> None:
        self.status = DetailStatus(self.status)

    @classmethod
    def success(cls) -> Outcome:
        return cls(DetailStatus.SUCCESS)

    @classmethod
    def ignored(cls, why: str) -> Outcome:
        return cls(DetailStatus.IGNORED, why)

    @classmethod
    def failed(
        cls, error_code: str, why: str, fields: list[dict[str, Any]] | None = None
    ) -> Outcome:
        return cls(DetailStatus.FAILED, why, error_code, fields)


@dataclass(frozen=True)
class WorkItem:
    """One claimed detail: which item, and its per-row payload (Excel) if any."""

    detail_id: int
    item_id: int
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class BatchRun:
    """What an operation needs to know about the batch it runs for."""

    batch_id: int
    creator_id: int
    params: dict[str, Any]
    dry_run: bool = False
    """Decide every item, write nothing, lock no row (``POST /batches`` with
    ``dry_run``). The caller runs the chunk in a savepoint it rolls back either way."""


@dataclass(frozen=True)
class Wakeup:
    """A queue message: a job name and a batch id, nothing else."""

    job: str
    batch_id: int
    priority: str = "normal"
    defer: float | None = None
    key: str | None = None
    """Dedupe key (arq ``_job_id``): a second wake-up with the same key is dropped."""
