"""monitor(batch_id): finalize a batch when nothing is left to do, and enforce its
failure threshold. Called right after an executor runs dry and, as a safety net, every
``BATCH_POLL_TIME`` while the batch is seeding or running — and never otherwise: a
monitor that finds its batch in any other state stops (recovery or a person moves it
on, and wakes a new monitor when it runs again)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import details, seed_exclusion
from app.batches.state import lock_batch, may_move, monitor_wakeup, move
from app.db.base import utcnow
from app.domain import RUNNABLE, BatchStatus, DetailStatus
from app.models import Batch, BatchDetail
from app.operations import get_operation
from app.runtime.context import JobContext

MIN_FINISHED_FOR_THRESHOLD = 20


def over_threshold(row: Any) -> bool:
    """Failure rate above the batch's threshold, after at least 20 finished items."""
    if row.failure_threshold is None or row.status not in RUNNABLE:
        return False
    finished = row.success + row.failed + row.ignored
    return finished >= MIN_FINISHED_FOR_THRESHOLD and row.failed / finished > row.failure_threshold


async def monitor(ctx: JobContext, batch_id: int) -> None:
    """The periodic safety net: abort, finalize, or look again in ``poll_time``."""
    async with ctx.sessionmaker() as session:
        batch = await session.get(Batch, batch_id)
    if batch is None or batch.status not in RUNNABLE:
        return
    if over_threshold(batch):
        await abort(ctx, batch_id)
        return
    if await finalize_if_done(ctx, batch_id):
        return
    await ctx.queue.enqueue(monitor_wakeup(ctx.settings, batch_id, batch.priority))


async def finalize_if_done(ctx: JobContext, batch_id: int) -> bool:
    """Complete the batch if seeding is over and no detail is pending or running."""
    async with ctx.unit() as session:
        seen = (
            await session.execute(
                select(Batch.status, Batch.progress_seq, Batch.seeding_done).where(
                    Batch.id == batch_id
                )
            )
        ).one_or_none()
        if seen is None or seen.status != BatchStatus.RUNNING or not seen.seeding_done:
            return False
        busy = await session.scalar(
            select(
                exists().where(
                    BatchDetail.batch_id == batch_id,
                    BatchDetail.status.in_((DetailStatus.PENDING, DetailStatus.RUNNING)),
                )
            )
        )
        if busy:
            return False
        # Anything that changed the batch since we looked (a retry, a last chunk) bumps
        # progress_seq; then whoever did it finalizes instead of us.
        if not await finish(session, batch_id, BatchStatus.COMPLETED, expect_seq=seen.progress_seq):
            await session.rollback()
            return False
    await ctx.progress.publish(batch_id)
    return True


async def abort(ctx: JobContext, batch_id: int) -> None:
    """Failure rate above the threshold: stop, pending items become cancelled. (Like a
    cancel, it never overlaps a seed page, which would add pending items after.)"""
    async with ctx.unit() as session:
        await seed_exclusion.exclude_seeding(session, batch_id)
        await session.execute(
            update(BatchDetail)
            .where(BatchDetail.batch_id == batch_id, BatchDetail.status == DetailStatus.PENDING)
            .values(
                status=DetailStatus.CANCELLED,
                finished_at=utcnow(),
                error="Not run: the batch was aborted (too many failures).",
            )
        )
        if not await finish(session, batch_id, BatchStatus.ABORTED):
            await session.rollback()
            return
    await ctx.progress.publish(batch_id)


async def finish(
    session: AsyncSession,
    batch_id: int,
    status: BatchStatus,
    *,
    expect_seq: int | None = None,
    counts: Mapping[DetailStatus, int] | None = None,
) -> bool:
    """Put a non-final batch into a final state: locks released (except those of failed
    items that may still be retried), counters recomputed from the details themselves
    (``counts``: already counted by the caller, holding the batch-row lock).

    Items first, the batch row last (like the executor), so this never deadlocks with
    a chunk still in flight. Returns False (caller rolls back) if the batch changed.
    """
    head = (
        await session.execute(select(Batch.type, Batch.max_retries).where(Batch.id == batch_id))
    ).one_or_none()
    if head is None:
        return False
    lock = get_operation(head.type).lock
    if lock is not None:
        await lock.release_all(session, batch_id, keep_retryable_of=head.max_retries)
    batch = await lock_batch(session, batch_id)
    if batch is None or not may_move(batch.status, status):
        return False
    if expect_seq is not None and (
        batch.status != BatchStatus.RUNNING or batch.progress_seq != expect_seq
    ):
        return False
    if counts is None:
        counts = await details.status_counts(session, batch.id)
    details.apply_counts(batch, counts)
    move(batch, status)
    await session.flush()
    return True
