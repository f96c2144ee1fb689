"""monitor(batch_id): finalize a batch when nothing is left to do, and enforce its
failure threshold. Called right after an executor runs dry and, as a safety net, every
``BATCH_POLL_TIME`` while the batch runs."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import details, locks
from app.db.base import utcnow
from app.models import Batch, BatchDetail
from app.models.batch import FINAL_BATCH_STATUSES
from app.operations import get_operation
from app.queue.backend import Wakeup
from app.queue.context import JobContext

MIN_FINISHED_FOR_THRESHOLD = 20


def over_threshold(row: Any) -> bool:
    """Failure rate above the batch's threshold, after at least 20 finished items."""
    if row.failure_threshold is None or row.status not in ("running", "seeding"):
        return False
    finished = row.success + row.failed + row.ignored
    return finished >= MIN_FINISHED_FOR_THRESHOLD and row.failed / finished > row.failure_threshold


async def monitor(ctx: JobContext, batch_id: int) -> None:
    """The periodic safety net: abort, finalize, or look again in ``poll_time``."""
    async with ctx.sessionmaker() as session:
        batch = await session.get(Batch, batch_id)
    if batch is None or batch.status in FINAL_BATCH_STATUSES or batch.status == "suspended":
        return
    if over_threshold(batch):
        await abort(ctx, batch_id)
        return
    if await finalize_if_done(ctx, batch_id):
        return
    await ctx.queue.enqueue(monitor_wakeup(ctx, batch_id, batch.priority))


def monitor_wakeup(ctx: JobContext, batch_id: int, priority: str) -> Wakeup:
    """Deduplicated per poll slot: any number of requests make one monitor per slot."""
    poll = ctx.settings.poll_time
    slot = int(time.time() // poll) + 1
    return Wakeup("monitor", batch_id, priority, defer=poll, key=f"monitor:{batch_id}:{slot}")


async def finalize_if_done(ctx: JobContext, batch_id: int) -> bool:
    """Complete the batch if seeding is over and no detail is pending or running."""
    async with ctx.sessionmaker() as session:
        seen = (
            await session.execute(
                select(Batch.status, Batch.progress_seq, Batch.seeding_done).where(
                    Batch.id == batch_id
                )
            )
        ).one_or_none()
        if seen is None or seen.status != "running" or not seen.seeding_done:
            return False
        busy = await session.scalar(
            select(
                exists().where(
                    BatchDetail.batch_id == batch_id,
                    BatchDetail.status.in_(("pending", "running")),
                )
            )
        )
        if busy:
            return False
        # Anything that changed the batch since we looked (a retry, a last chunk) bumps
        # progress_seq; then whoever did it finalizes instead of us.
        if not await _finish(session, batch_id, "completed", expect_seq=seen.progress_seq):
            await session.rollback()
            return False
        await session.commit()
    await ctx.progress.publish(batch_id)
    return True


async def abort(ctx: JobContext, batch_id: int) -> None:
    """Failure rate above the threshold: stop, pending items become cancelled."""
    async with ctx.sessionmaker() as session:
        now = utcnow()
        await session.execute(
            update(BatchDetail)
            .where(BatchDetail.batch_id == batch_id, BatchDetail.status == "pending")
            .values(
                status="cancelled",
                finished_at=now,
                error="Not run: the batch was aborted (too many failures).",
            )
        )
        if not await _finish(session, batch_id, "aborted"):
            await session.rollback()
            return
        await session.commit()
    await ctx.progress.publish(batch_id)


async def _finish(
    session: AsyncSession, batch_id: int, status: str, *, expect_seq: int | None = None
) -> bool:
    """Put a non-final batch into a final state: locks released (except those of failed
    items that may still be retried), counters recomputed from the details themselves.

    Items first, the batch row last (like the executor), so this never deadlocks with
    a chunk still in flight. Returns False (caller rolls back) if the batch changed.
    """
    head = (
        await session.execute(select(Batch.type, Batch.max_retries).where(Batch.id == batch_id))
    ).one_or_none()
    if head is None:
        return False
    if get_operation(head.type).locks_items:
        await locks.release_all(session, batch_id, keep_retryable_of=head.max_retries)
    batch = await session.scalar(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if batch is None or batch.status in FINAL_BATCH_STATUSES:
        return False
    if expect_seq is not None and (batch.status != "running" or batch.progress_seq != expect_seq):
        return False
    details.apply_counts(batch, await details.status_counts(session, batch.id))
    now = utcnow()
    batch.status = status
    batch.finished_at = now
    batch.updated_at = now
    batch.progress_seq += 1
    await session.flush()
    return True
