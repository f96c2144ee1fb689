"""The one owner of batch and detail state.

Everything that decides *which status a batch may move to*, *what an exhausted item
is*, *how the batch row is locked* and *what must be woken up for a batch in a given
state* lives here; services, jobs and crons ask this module instead of repeating
tuples of status strings.

State machine (``TRANSITIONS``)::

    scheduled ──► created ──► seeding ──► running ──► completed
        │            │           │  ▲        │  ▲         │
        │            │           ▼  │        ▼  │ retry   │ retry
        │            └──────► suspended ◄────┘  └─────────┘ (also from aborted)
        │                        │
        └──── any non-final ─────┴──► cancelled      running/seeding ──► aborted

Every non-final state has a way forward that needs nothing but the database: the
recovery cron (and the embedded start-up) call ``wakeups`` for the state a batch is
in, and the jobs it names move the batch on. A state with nothing to wake
(``suspended`` after seeding, ``scheduled`` before its time) waits for a person or for
the clock; no job polls it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import object_session

from app.batches import notify
from app.config import Settings
from app.db.base import utcnow
from app.domain import FINAL, RUNNABLE, BatchStatus, Wakeup, may_retry
from app.errors import Conflict
from app.models import Batch

S = BatchStatus

TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.SCHEDULED: frozenset({S.CREATED, S.SUSPENDED, S.CANCELLED}),
    S.CREATED: frozenset({S.SEEDING, S.RUNNING, S.COMPLETED, S.SUSPENDED, S.CANCELLED}),
    S.SEEDING: frozenset({S.RUNNING, S.SUSPENDED, S.CANCELLED, S.ABORTED}),
    S.RUNNING: frozenset({S.COMPLETED, S.SUSPENDED, S.CANCELLED, S.ABORTED}),
    # Activated: on to seeding/running, or back to scheduled/created if it never started.
    S.SUSPENDED: frozenset({S.SCHEDULED, S.CREATED, S.SEEDING, S.RUNNING, S.CANCELLED}),
    # A retry puts failed items back to pending: the batch runs again.
    S.COMPLETED: frozenset({S.RUNNING}),
    S.ABORTED: frozenset({S.RUNNING}),
    S.CANCELLED: frozenset(),
}


def is_final(status: str) -> bool:
    return status in FINAL


def may_move(source: str, target: BatchStatus) -> bool:
    return target in TRANSITIONS.get(BatchStatus(source), frozenset())


def sources_of(target: BatchStatus) -> list[str]:
    """Every status that may move to ``target`` — for conditional UPDATEs."""
    return sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)


def move(batch: Batch, target: BatchStatus, *, why: str = "") -> None:
    """Move a loaded (and row-locked, see ``lock_batch``) batch to ``target``, with the
    timestamps that go with it; raises ``Conflict`` for a move the table forbids. The
    move's webhook events are noted on the batch's session and reach the outbox in the
    same transaction (``app/batches/notify.py``)."""
    if not may_move(batch.status, target):
        reason = f" {why}" if why else ""
        raise Conflict(f"Batch {batch.id} is {batch.status}; it cannot become {target}.{reason}")
    now = utcnow()
    source = batch.status
    first_start = target in RUNNABLE and batch.started_at is None
    batch.status = target.value
    if first_start:
        batch.started_at = now
    if target in FINAL:
        batch.finished_at = now
    elif batch.finished_at is not None:
        batch.finished_at = None  # run again (retry)
    touch(batch, now)
    session = object_session(batch)
    if session is not None:  # the webhook events of this change, in its transaction
        for kind in notify.move_events(source, target, first_start=first_start):
            notify.note(session, batch.id, kind)


def move_values(target: BatchStatus, now: Any = None) -> dict[str, Any]:
    """``move`` for a set-based ``UPDATE batches … WHERE status IN sources_of(target)``:
    the same status, timestamps and progress sequence, as column values. (The caller
    notes the webhook events of what it moved: ``notify.note``.)"""
    now = now or utcnow()
    values: dict[str, Any] = {
        "status": target.value,
        "updated_at": now,
        "progress_seq": Batch.progress_seq + 1,
    }
    if target in RUNNABLE:
        values["started_at"] = func.coalesce(Batch.started_at, now)
    if target in FINAL:
        values["finished_at"] = now
    return values


def touch(batch: Batch, now: Any = None) -> None:
    """Heartbeat and progress sequence: every visible change bumps both."""
    batch.updated_at = now or utcnow()
    batch.progress_seq += 1


async def lock_batch(session: AsyncSession, batch_id: int) -> Batch | None:
    """Re-read the batch under a row lock before changing its counters or status.

    Lock order everywhere: detail rows and items first, the batch row last (the
    executor does the same), so a lifecycle action never deadlocks with a chunk."""
    batch: Batch | None = await session.scalar(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return batch


# --------------------------------------------------------------------------- retries


def is_exhausted(retry_count: int, max_retries: int) -> bool:
    """A failed item that has used up its retries: never retried again, lock released."""
    return not may_retry(retry_count, max_retries)


def retryable(retry_count: Any, max_retries: Any) -> ColumnElement[bool]:
    """SQL form of ``not is_exhausted`` (columns or values)."""
    expr: ColumnElement[bool] = may_retry(retry_count, max_retries)
    return expr


# --------------------------------------------------------------------------- wake-ups


def executors_per_batch(settings: Settings) -> int:
    """Parallel executors of one batch: one on SQLite (a single writer), else
    ``jobs_per_batch``."""
    return 1 if settings.is_sqlite else settings.jobs_per_batch


def execution_wakeups(settings: Settings, batch_id: int, priority: str) -> list[Wakeup]:
    """The executors of a runnable batch, and its monitor."""
    execute = [Wakeup("execute", batch_id, priority)] * executors_per_batch(settings)
    return [*execute, monitor_wakeup(settings, batch_id, priority)]


def monitor_wakeup(settings: Settings, batch_id: int, priority: str) -> Wakeup:
    """Deduplicated per poll slot: any number of requests make one monitor per slot."""
    poll = settings.poll_time
    slot = int(time.time() // poll) + 1
    return Wakeup("monitor", batch_id, priority, defer=poll, key=f"monitor:{batch_id}:{slot}")


def wakeups(
    settings: Settings,
    batch_id: int,
    status: str,
    priority: str,
    *,
    seeding_done: bool,
    targets_resolved: bool = True,
) -> list[Wakeup]:
    """What moves a batch on *from the state it is in*. Used by create, seed, activate,
    retry, recovery and the embedded start-up alike, so no state is forgotten."""
    seed = Wakeup("seed", batch_id, priority)
    run = execution_wakeups(settings, batch_id, priority)
    match BatchStatus(status):
        case S.CREATED:
            # The seed job starts every batch: it seeds a filter, or moves an id-list
            # batch (details already written) to running; either way it then wakes
            # executors and the monitor.
            return [seed]
        case S.SEEDING:
            return [seed, *run]
        case S.RUNNING:
            return [*([] if seeding_done else [seed]), *run]
        case S.SUSPENDED:
            # Items are still resolved (and locked) while it waits; nothing runs. (A
            # scheduled filter is resolved only when the batch starts.)
            return [] if seeding_done or not targets_resolved else [seed]
        case S.SCHEDULED:
            # The schedule cron moves it to created when its time comes.
            return []
    return []


def wakeups_for(settings: Settings, batch: Any) -> list[Wakeup]:
    """``wakeups`` for a batch row (ORM object or a row with the same attributes)."""
    return wakeups(
        settings,
        batch.id,
        batch.status,
        batch.priority,
        seeding_done=batch.seeding_done,
        targets_resolved=getattr(batch, "targets_resolved", True),
    )


def statuses(values: Iterable[BatchStatus]) -> list[str]:
    return sorted(v.value for v in values)
