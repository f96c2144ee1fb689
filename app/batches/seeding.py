"""seed(batch_id): turn a filter into details page by page, then start execution.

A page of ``jobs_per_seed × chunk_size`` items is one short transaction: it inserts the
details, takes the item locks and advances ``seed_cursor`` — conditionally on the
cursor it started from, so two copies of this job never seed the same page twice. One
invocation seeds pages for up to ``SEED_SLICE_S``, then re-enqueues itself. Memory stays
flat and no transaction grows with the batch. Execution starts after the first page,
alongside seeding.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import DBAPIError

from app.batches import details, locks, targets
from app.db.base import utcnow
from app.models import Batch, BatchDetail, User
from app.models.batch import FINAL_BATCH_STATUSES
from app.operations import get_operation
from app.queue.backend import Wakeup
from app.queue.context import JobContext

MAX_PAGE = 20_000


SEED_RETRY_DELAY_S = 1.0


SEED_SLICE_S = 1.0
"""One invocation seeds page after page (each its own short transaction) for up to this
long, then hands the rest back to the queue: no queue hop between pages, and no seed job
holds a worker slot for long."""


async def seed(ctx: JobContext, batch_id: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEED_SLICE_S
    while not ctx.stopping.is_set():
        try:
            state = await _seed_page(ctx, batch_id)
        except DBAPIError:
            # The database blinked: come back soon rather than after BATCH_START_TIMEOUT.
            await ctx.queue.enqueue(Wakeup("seed", batch_id, defer=SEED_RETRY_DELAY_S))
            raise
        if state is None:
            return
        priority, first, done = state
        if first or done:
            await start_execution(ctx, batch_id, priority)
        if done:
            return
        if loop.time() > deadline:
            await ctx.queue.enqueue(Wakeup("seed", batch_id, priority))
            return


async def _seed_page(ctx: JobContext, batch_id: int) -> tuple[str, bool, bool] | None:
    """Seed one page. Returns (priority, first page, seeding done) or None when there is
    nothing to do (batch gone, final, or another seeder got there first)."""
    async with ctx.sessionmaker() as session:
        await locks.exclude_seeding(session, batch_id)
        batch = await session.get(Batch, batch_id)
        if batch is None or batch.status in FINAL_BATCH_STATUSES:
            return None
        now = utcnow()
        if batch.seeding_done:
            # Id-list batch (details made at creation) or a re-delivered seed job.
            if batch.status in ("created", "seeding"):
                await session.execute(
                    update(Batch)
                    .where(Batch.id == batch_id, Batch.status.in_(("created", "seeding")))
                    .values(
                        status="running",
                        started_at=func.coalesce(Batch.started_at, now),
                        updated_at=now,
                        progress_seq=Batch.progress_seq + 1,
                    )
                )
                await session.commit()
            return batch.priority, True, True
        op = get_operation(batch.type)
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        cursor = batch.seed_cursor
        page_size = min(batch.chunk_size * ctx.settings.jobs_per_seed, MAX_PAGE)
        page = targets.page_after(
            op.target,
            creator,
            batch.filter or {},
            after=cursor,
            until=batch.seed_until,
            limit=page_size,
        )
        seeded = await details.create_details_from(session, batch, op, page)
        failed = seeded.failed
        done = seeded.count < page_size
        values: dict[str, object] = {
            "seed_cursor": seeded.last_item_id or cursor,
            "seeding_done": done,
            "failed": Batch.failed + failed,
            "started_at": func.coalesce(Batch.started_at, now),
            "updated_at": now,
            "progress_seq": Batch.progress_seq + 1,
        }
        # Only a batch nobody paused or cancelled meanwhile changes status here.
        values["status"] = case(
            (Batch.status.in_(("created", "seeding")), "running" if done else "seeding"),
            else_=Batch.status,
        )
        if done:
            # The filter was counted at creation; the details are what really matched.
            values["total"] = (
                select(func.count())
                .select_from(BatchDetail)
                .where(BatchDetail.batch_id == batch_id)
                .scalar_subquery()
            )
        moved = await session.execute(
            update(Batch)
            .where(
                Batch.id == batch_id,
                Batch.seed_cursor == cursor,
                Batch.seeding_done.is_(False),
                Batch.status.not_in(FINAL_BATCH_STATUSES),
            )
            .values(**values)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            return None
        await session.commit()
        priority = batch.priority
    await ctx.progress.publish(batch_id)
    return priority, cursor == 0, done


async def start_execution(ctx: JobContext, batch_id: int, priority: str) -> None:
    """Wake up enough executors to run chunks of this batch in parallel, plus its monitor."""
    from app.batches.monitor import monitor_wakeup

    parallel = 1 if ctx.settings.is_sqlite else ctx.settings.jobs_per_batch
    for _ in range(parallel):
        await ctx.queue.enqueue(Wakeup("execute", batch_id, priority))
    await ctx.queue.enqueue(monitor_wakeup(ctx, batch_id, priority))
