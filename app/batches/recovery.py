"""The crons: recover stuck work, auto-retry recent failures, purge old history.

Every pass is idempotent and safe on several workers at once: each takes its work with
a conditional UPDATE (only the worker whose UPDATE matched acts), besides arq's own
``unique`` crons.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, delete, exists, or_, select, update

from app.batches import service, state
from app.db.base import utcnow
from app.db.unit_of_work import request_wakeup
from app.domain import FINAL, STARTING, BatchStatus
from app.errors import AppError
from app.models import Batch, BatchDetail, SeedClaim, Task, awaiting_auto_retry
from app.runtime.context import JobContext
from app.webhooks.service import purge_deliveries

log = logging.getLogger("batchd.recovery")
PASS_LIMIT = 100


async def recover(ctx: JobContext) -> None:
    """Batches with no heartbeat for ``BATCH_STUCK_AFTER`` (running) or not started within
    ``BATCH_START_TIMEOUT`` (created, seeding, or suspended with seeding unfinished) get
    the wake-ups of the state they are in (``state.wakeups``), and their heartbeat is
    touched so the next pass leaves them alone for a while. (A chunk's claim is its
    transaction's row locks, so a dead worker's items are already pending again.)"""
    s = ctx.settings
    now = utcnow()
    not_started = now - timedelta(seconds=s.start_timeout)
    async with ctx.unit() as session:
        stuck = (
            await session.execute(
                update(Batch)
                .where(
                    or_(
                        and_(
                            Batch.status == BatchStatus.RUNNING,
                            Batch.updated_at < now - timedelta(seconds=s.stuck_after),
                        ),
                        and_(
                            Batch.status.in_(state.statuses(STARTING)),
                            Batch.updated_at < not_started,
                        ),
                        # Created suspended: its items are still resolved while it waits.
                        and_(
                            Batch.status == BatchStatus.SUSPENDED,
                            Batch.seeding_done.is_(False),
                            Batch.targets_resolved.is_(True),
                            Batch.updated_at < not_started,
                        ),
                    )
                )
                .values(updated_at=now)
                .returning(*_WAKE_COLUMNS)
            )
        ).all()
        for row in stuck:
            log.info("recovering batch %s (%s)", row.id, row.status)
            for wakeup in state.wakeups_for(s, row):
                request_wakeup(session, wakeup)


_WAKE_COLUMNS = (
    Batch.id,
    Batch.status,
    Batch.priority,
    Batch.seeding_done,
    Batch.targets_resolved,
)
"""What ``state.wakeups_for`` reads from a batch row."""


async def start_due(ctx: JobContext) -> None:
    """The schedule cron: ``scheduled`` batches whose ``start_at`` has come become
    ``created`` and are woken like any created batch (their filter is resolved by the
    seed job). It runs every ``BATCH_POLL_TIME``, so a lost wake-up or a restart costs
    at most one pass; the conditional UPDATE lets several workers run it at once."""
    now = utcnow()
    async with ctx.unit() as session:
        due = (
            await session.execute(
                update(Batch)
                .where(Batch.status == BatchStatus.SCHEDULED, Batch.start_at <= now)
                .values(**state.move_values(BatchStatus.CREATED, now))
                .returning(*_WAKE_COLUMNS)
            )
        ).all()
        for row in due:
            log.info("starting scheduled batch %s", row.id)
            for wakeup in state.wakeups_for(ctx.settings, row):
                request_wakeup(session, wakeup)
    for row in due:
        await ctx.progress.publish(row.id)


async def auto_retry(ctx: JobContext) -> None:
    """Batches that finished within ``BATCH_AUTO_RETRY_WINDOW`` (and at least
    ``auto_retry_delay`` ago) with failed, non-exhausted, *retryable* items
    (``awaiting_auto_retry``) are retried, once per pass, those items only. A batch
    whose failures need fixing (``wrong_state``, ``validation``…) is left alone:
    running it again would fail it again."""
    s = ctx.settings
    if s.auto_retry_window <= 0:
        return
    now = utcnow()
    async with ctx.sessionmaker() as session:
        ids = list(
            await session.scalars(
                select(Batch.id)
                .where(
                    Batch.status.in_(state.statuses(FINAL - {BatchStatus.CANCELLED})),
                    Batch.finished_at >= now - timedelta(seconds=s.auto_retry_window),
                    Batch.finished_at <= now - timedelta(seconds=s.auto_retry_delay),
                    exists().where(
                        BatchDetail.batch_id == Batch.id,
                        awaiting_auto_retry(Batch.max_retries),
                    ),
                )
                .limit(PASS_LIMIT)
            )
        )
    for batch_id in ids:
        try:
            async with ctx.unit() as session:
                result = await service.retry(session, s, None, batch_id, guard_finished=True)
            if result.requeued:
                log.info("auto-retried %s items of batch %s", result.requeued, batch_id)
        except AppError as exc:
            log.info("auto-retry of batch %s skipped: %s", batch_id, exc.detail)


async def purge(ctx: JobContext) -> None:
    """Delete finished batches older than their history TTL; release the locks that
    failed items of finished batches still hold once they can no longer be auto-retried;
    delete delivered and given-up webhook deliveries older than ``BATCH_HISTORY_TTL``."""
    s = ctx.settings
    now = utcnow()
    async with ctx.unit() as session:
        ttls = set(
            await session.scalars(
                select(Batch.history_ttl).where(Batch.status.in_(state.statuses(FINAL))).distinct()
            )
        )
        old: list[int] = []
        for ttl in ttls:
            cutoff = now - timedelta(seconds=s.history_ttl if ttl is None else ttl)
            same_ttl = Batch.history_ttl.is_(None) if ttl is None else Batch.history_ttl == ttl
            old += await session.scalars(
                select(Batch.id)
                .where(
                    Batch.status.in_(state.statuses(FINAL)),
                    same_ttl,
                    Batch.finished_at < cutoff,
                )
                .limit(PASS_LIMIT)
            )
        if old:
            await session.execute(
                update(Task).where(Task.locked_by_batch_id.in_(old)).values(locked_by_batch_id=None)
            )
            await session.execute(delete(BatchDetail).where(BatchDetail.batch_id.in_(old)))
            await session.execute(delete(SeedClaim).where(SeedClaim.batch_id.in_(old)))
            await session.execute(delete(Batch).where(Batch.id.in_(old)))
            log.info("purged %s finished batches", len(old))
        stale = (
            select(Batch.id)
            .where(
                Batch.status.in_(state.statuses(FINAL)),
                Batch.finished_at < now - timedelta(seconds=s.auto_retry_window),
            )
            .scalar_subquery()
        )
        await session.execute(
            update(Task).where(Task.locked_by_batch_id.in_(stale)).values(locked_by_batch_id=None)
        )
        # The webhook delivery log: delivered and given-up rows past BATCH_HISTORY_TTL
        # (each holds a whole batch object); pending ones stay until they go out.
        await purge_deliveries(session, now - timedelta(seconds=s.history_ttl))
