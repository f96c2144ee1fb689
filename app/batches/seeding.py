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
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import details, locks, state
from app.batches.state import RUNNABLE, STARTING, BatchStatus
from app.db.base import utcnow
from app.engine.logs import write_action_log
from app.models import Batch, BatchDetail, User
from app.operations import BatchRun, Operation, get_operation, targets
from app.queue.backend import Wakeup, request_wakeup
from app.queue.context import JobContext

log = logging.getLogger("batchd.seeding")

MAX_PAGE = 20_000


SEED_RETRY_DELAY_S = 1.0


SEED_SLICE_S = 1.0
"""One invocation seeds page after page (each its own short transaction) for up to this
long, then hands the rest back to the queue: no queue hop between pages, and no seed job
holds a worker slot for long."""


@dataclass(frozen=True)
class SeededPage:
    """What one ``seed_page`` did: the batch's priority, and whether seeding is over."""

    priority: str
    done: bool
    stop: bool = False
    """Seeding ended for good (the batch was refused): no further page."""


async def seed(ctx: JobContext, batch_id: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEED_SLICE_S
    priority = "normal"  # until the first page says
    while not ctx.stopping.is_set():
        try:
            page = await seed_page(ctx, batch_id)
        except DBAPIError:
            # The database blinked: come back soon rather than after BATCH_START_TIMEOUT.
            retry = Wakeup("seed", batch_id, priority, defer=SEED_RETRY_DELAY_S)
            await ctx.queue.enqueue(retry)
            raise
        if page is not None:
            priority = page.priority
        if page is None or page.done or page.stop:
            return
        if loop.time() > deadline:
            await ctx.queue.enqueue(Wakeup("seed", batch_id, page.priority))
            return


async def seed_page(ctx: JobContext, batch_id: int) -> SeededPage | None:
    """Seed one page (or start an id-list batch, whose details exist already). Returns
    None when there is nothing to do (batch gone, final, or another seeder got there
    first). After the first page and after the last, wakes the batch's executors and
    monitor (``state.execution_wakeups``), sent once the page is committed."""
    async with ctx.unit() as session:
        await locks.exclude_seeding(session, batch_id)
        batch = await session.get(Batch, batch_id)
        if batch is None or state.is_final(batch.status):
            return None
        if batch.status == BatchStatus.SCHEDULED:
            return None  # not yet: the schedule cron creates it when its time comes
        now = utcnow()
        if batch.seeding_done:
            # Id-list batch (details made at creation) or a re-delivered seed job.
            started = await session.scalar(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status.in_(state.statuses(STARTING)))
                .values(
                    status=BatchStatus.RUNNING,
                    started_at=func.coalesce(Batch.started_at, now),
                    updated_at=now,
                    progress_seq=Batch.progress_seq + 1,
                )
                .returning(Batch.status)
            )
            if started is not None:
                _request_execution(ctx, session, batch_id, batch.priority)
            return SeededPage(batch.priority, done=True)
        op = get_operation(batch.type)
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        cursor, priority = batch.seed_cursor, batch.priority
        exact: int | None = None
        if not batch.targets_resolved:
            if batch.status not in STARTING:
                return None  # suspended before it started: resolved once activated
            exact = await _resolve_filter(session, batch, op, creator)
        elif cursor == 0 and batch.total >= targets.ESTIMATE_FROM:
            # The create request took the planner's estimate (``count_for_create``):
            # count exactly before the first page, so the limit holds and ``total`` is
            # right from the start.
            exact, _ = await op.target.count(session, creator, batch.filter or {})
            await session.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.seed_cursor == 0)
                .values(total=exact)
            )
        if exact is not None and exact > ctx.settings.max_items:
            if not await _refuse_too_large(session, batch_id, exact, ctx.settings.max_items):
                return None
            refused = True
        else:
            refused = False
            seeded_page = await _seed_next_page(ctx, session, batch, op, creator, cursor, now)
            if seeded_page is None:
                return None
    await ctx.progress.publish(batch_id)
    if refused:
        return SeededPage(priority, done=True, stop=True)
    return seeded_page


async def _seed_next_page(
    ctx: JobContext,
    session: AsyncSession,
    batch: Batch,
    op: Operation,
    creator: User,
    cursor: int,
    now: Any,
) -> SeededPage | None:
    """Insert the page after ``cursor`` and advance the batch (same transaction)."""
    batch_id = batch.id
    page_size = min(batch.chunk_size * ctx.settings.jobs_per_seed, MAX_PAGE)
    page = op.target.page_after(
        creator,
        batch.filter or {},
        after=cursor,
        until=batch.seed_until,
        limit=page_size,
    )
    seeded = await details.create_details_from(
        session, batch, creator, op, page, run=_fusion_run(session, batch)
    )
    done = seeded.count < page_size
    values: dict[str, object] = {
        "seed_cursor": seeded.last_item_id or cursor,
        "seeding_done": done,
        "success": Batch.success + seeded.success,
        "failed": Batch.failed + seeded.failed,
        "ignored": Batch.ignored + seeded.ignored,
        "started_at": func.coalesce(Batch.started_at, now),
        "updated_at": now,
        "progress_seq": Batch.progress_seq + 1,
    }
    # Only a batch nobody paused or cancelled meanwhile changes status here.
    values["status"] = case(
        (
            Batch.status.in_(state.statuses(STARTING)),
            BatchStatus.RUNNING if done else BatchStatus.SEEDING,
        ),
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
    status = await session.scalar(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.seed_cursor == cursor,
            Batch.seeding_done.is_(False),
            Batch.status.not_in(state.statuses(state.FINAL)),
        )
        .values(**values)
        .returning(Batch.status)
    )
    if status is None:
        await session.rollback()
        return None
    # A fused page leaves only stragglers pending: executors start once seeding is
    # done instead of polling alongside it.
    first = cursor == 0 and not seeded.fused
    if (first or done) and status in RUNNABLE:
        _request_execution(ctx, session, batch_id, batch.priority)
    return SeededPage(batch.priority, done)


async def _resolve_filter(session: AsyncSession, batch: Batch, op: Any, creator: User) -> int:
    """A scheduled filter batch resolves its filter when it starts, not when it was
    created: count what matches now, and seed up to today's highest id."""
    total, seed_until = await op.target.count(session, creator, batch.filter or {})
    await session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.targets_resolved.is_(False))
        .values(targets_resolved=True, total=total, seed_until=seed_until)
    )
    batch.seed_until = seed_until
    return int(total)


async def _refuse_too_large(
    session: AsyncSession, batch_id: int, total: int, max_items: int
) -> bool:
    """The filter matches more than ``BATCH_MAX_ITEMS`` (known only now: the create
    request estimated it, or the batch was scheduled): nothing has been seeded or
    applied; the batch ends ``aborted`` (``cancelled`` if it was created suspended),
    and the reason goes to the action log and the worker log."""
    batch = await state.lock_batch(session, batch_id)
    if batch is None or batch.seed_cursor != 0 or batch.status not in state.SUSPENDABLE:
        return False
    message = f"This batch would hold {total} items; the limit is {max_items}."
    if batch.status == BatchStatus.SUSPENDED:
        state.move(batch, BatchStatus.CANCELLED)
    else:
        if batch.status == BatchStatus.CREATED:
            state.move(batch, BatchStatus.SEEDING)
        state.move(batch, BatchStatus.ABORTED)
    batch.total = 0
    batch.seeding_done = True
    await write_action_log(
        session, None, "batch.refused", batch_id=batch_id, detail={"error": message}
    )
    log.warning("batch %s refused: %s", batch_id, message)
    return True


def _fusion_run(session: AsyncSession, batch: Batch) -> BatchRun | None:
    """Whether a seed page may also apply the operation (``details.create_details_from``
    with ``run``): on PostgreSQL, for a batch that is starting or running (never one
    paused or created suspended) and not rate-limited (the rate budget is the
    executor's)."""
    if (
        batch.status not in (BatchStatus.CREATED, BatchStatus.SEEDING, BatchStatus.RUNNING)
        or batch.max_items_per_second is not None
        or session.get_bind().dialect.name != "postgresql"
    ):
        return None
    return BatchRun(batch.id, batch.creator_id, batch.params or {})


def _request_execution(
    ctx: JobContext, session: AsyncSession, batch_id: int, priority: str
) -> None:
    for wakeup in state.execution_wakeups(ctx.settings, batch_id, priority):
        request_wakeup(session, wakeup)
