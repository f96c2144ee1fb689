"""The crons: recover stuck work, auto-retry recent failures, purge old history.

Every pass is idempotent and safe on several workers at once: each takes its work with
a conditional UPDATE (only the worker whose UPDATE matched acts), besides arq's own
``unique`` crons.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, delete, exists, or_, select, update

from app.batches import service
from app.batches.monitor import monitor_wakeup
from app.db.base import utcnow
from app.db.session import transaction
from app.errors import AppError
from app.models import Batch, BatchDetail, Task
from app.models.batch import FINAL_BATCH_STATUSES
from app.queue.backend import Wakeup
from app.queue.context import JobContext

log = logging.getLogger("batchd.recovery")
PASS_LIMIT = 100


async def recover(ctx: JobContext) -> None:
    """Batches with no heartbeat for ``BATCH_STUCK_AFTER`` (running) or not started within
    ``BATCH_START_TIMEOUT`` (created/seeding, or suspended with seeding unfinished) are
    woken up again. (A chunk's claim is
    its transaction's row locks, so a dead worker's items are already pending again.)"""
    s = ctx.settings
    now = utcnow()
    async with transaction(ctx.sessionmaker) as session:
        stuck = (
            await session.execute(
                update(Batch)
                .where(
                    or_(
                        and_(
                            Batch.status == "running",
                            Batch.updated_at < now - timedelta(seconds=s.stuck_after),
                        ),
                        and_(
                            Batch.status.in_(("created", "seeding")),
                            Batch.updated_at < now - timedelta(seconds=s.start_timeout),
                        ),
                        # Created suspended: its items are still resolved while it waits.
                        and_(
                            Batch.status == "suspended",
                            Batch.seeding_done.is_(False),
                            Batch.updated_at < now - timedelta(seconds=s.start_timeout),
                        ),
                    )
                )
                .values(updated_at=now)
                .returning(Batch.id, Batch.priority, Batch.seeding_done)
            )
        ).all()
    for batch_id, priority, seeding_done in stuck:
        log.info("recovering batch %s", batch_id)
        await wake(ctx, batch_id, priority, seeding_done)


async def wake(ctx: JobContext, batch_id: int, priority: str, seeding_done: bool) -> None:
    if not seeding_done:
        await ctx.queue.enqueue(Wakeup("seed", batch_id, priority))
    for _ in range(1 if ctx.settings.is_sqlite else ctx.settings.jobs_per_batch):
        await ctx.queue.enqueue(Wakeup("execute", batch_id, priority))
    await ctx.queue.enqueue(monitor_wakeup(ctx, batch_id, priority))


async def auto_retry(ctx: JobContext) -> None:
    """Batches that finished within ``BATCH_AUTO_RETRY_WINDOW`` (and at least
    ``auto_retry_delay`` ago) with failed, non-exhausted items are retried, once per pass."""
    s = ctx.settings
    if s.auto_retry_window <= 0:
        return
    now = utcnow()
    async with ctx.sessionmaker() as session:
        ids = list(
            await session.scalars(
                select(Batch.id)
                .where(
                    Batch.status.in_(("completed", "aborted")),
                    Batch.finished_at >= now - timedelta(seconds=s.auto_retry_window),
                    Batch.finished_at <= now - timedelta(seconds=s.auto_retry_delay),
                    exists().where(
                        BatchDetail.batch_id == Batch.id,
                        BatchDetail.status == "failed",
                        BatchDetail.retry_count < Batch.max_retries,
                    ),
                )
                .limit(PASS_LIMIT)
            )
        )
    for batch_id in ids:
        try:
            async with ctx.sessionmaker() as session:
                result = await service.retry(session, None, batch_id, guard_finished=True)
                await session.commit()
            await ctx.queue.send_wakeups(session)
            if result.requeued:
                log.info("auto-retried %s items of batch %s", result.requeued, batch_id)
        except AppError as exc:
            log.info("auto-retry of batch %s skipped: %s", batch_id, exc.detail)


async def purge(ctx: JobContext) -> None:
    """Delete finished batches older than their history TTL; release the locks that
    failed items of finished batches still hold once they can no longer be auto-retried."""
    s = ctx.settings
    now = utcnow()
    async with transaction(ctx.sessionmaker) as session:
        ttls = set(
            await session.scalars(
                select(Batch.history_ttl).where(Batch.status.in_(FINAL_BATCH_STATUSES)).distinct()
            )
        )
        old: list[int] = []
        for ttl in ttls:
            cutoff = now - timedelta(seconds=s.history_ttl if ttl is None else ttl)
            same_ttl = Batch.history_ttl.is_(None) if ttl is None else Batch.history_ttl == ttl
            old += await session.scalars(
                select(Batch.id)
                .where(Batch.status.in_(FINAL_BATCH_STATUSES), same_ttl, Batch.finished_at < cutoff)
                .limit(PASS_LIMIT)
            )
        if old:
            await session.execute(
                update(Task).where(Task.locked_by_batch_id.in_(old)).values(locked_by_batch_id=None)
            )
            await session.execute(delete(BatchDetail).where(BatchDetail.batch_id.in_(old)))
            await session.execute(delete(Batch).where(Batch.id.in_(old)))
            log.info("purged %s finished batches", len(old))
        stale = (
            select(Batch.id)
            .where(
                Batch.status.in_(FINAL_BATCH_STATUSES),
                Batch.finished_at < now - timedelta(seconds=s.auto_retry_window),
            )
            .scalar_subquery()
        )
        await session.execute(
            update(Task).where(Task.locked_by_batch_id.in_(stale)).values(locked_by_batch_id=None)
        )
