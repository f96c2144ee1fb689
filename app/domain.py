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


class ErrorCode(enum.StrEnum):
    """Why an item failed, as a stable word a program can branch on."""

    VALIDATION = "validation"
    """The item's input breaks a rule (a required field, a value out of range)."""
    NOT_FOUND = "not_found"
    """Missing — or hidden from the batch's creator, which looks the same."""
    FORBIDDEN = "forbidden"
    WRONG_STATE = "wrong_state"
    """The item is not in a state the operation applies to (process suspended, task
    not pending, instance completed)."""
    LOCKED = "locked"
    """Another batch holds the item."""
    WRONG_NODE = "wrong_node"
    """A template row whose task is at another step than the sheet's."""
    CONFLICT = "conflict"
    TRANSIENT = "transient"
    """Deadlock, serialization failure, lock timeout, lost connection."""
    INTERNAL = "internal"
    """An unexpected error (a bug): the sentence says what, the log says where."""


RETRYABLE_CODES: frozenset[ErrorCode] = frozenset({ErrorCode.TRANSIENT, ErrorCode.LOCKED})
"""Failures a later run may cure without anybody fixing anything: the only ones that
automatic retries (in-chunk and the auto-retry cron) touch."""


def may_retry(retry_count: Any, max_retries: Any) -> Any:
    """A failed item that has retries left. Works on numbers and on SQL columns alike
    (``retry_count < max_retries``), so Python and SQL never disagree."""
    return retry_count < max_retries


@dataclass
class Outcome:
    """What happened to one item: ``success``, ``ignored`` or ``failed`` (+ why).

    A failure always carries an ``ErrorCode`` (``internal`` when none was given) and
    ``retryable``, derived from it (``code in RETRYABLE_CODES``): whether running the
    item again, with nothing fixed, could change anything. Both are None unless
    failed, as on the stored detail."""

    status: DetailStatus
    error: str | None = None
    error_code: ErrorCode | None = None
    fields: list[dict[str, Any]] | None = None
    retryable: bool | None = None

    def __post_init__(self) -> None:
        self.status = DetailStatus(self.status)
        if self.status != DetailStatus.FAILED:
            self.error_code, self.retryable = None, None
            return
        self.error_code = ErrorCode(self.error_code or ErrorCode.INTERNAL)
        self.retryable = self.error_code in RETRYABLE_CODES

    @classmethod
    def success(cls) -> Outcome:
        return cls(DetailStatus.SUCCESS)

    @classmethod
    def ignored(cls, why: str) -> Outcome:
        return cls(DetailStatus.IGNORED, why)

    @classmethod
    def failed(
        cls, code: ErrorCode, why: str, fields: list[dict[str, Any]] | None = None
    ) -> Outcome:
        """``code`` must be an ``ErrorCode`` (or its word): an unknown word raises."""
        return cls(DetailStatus.FAILED, why, ErrorCode(code), fields)


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
