"""execute(batch_id): claim a chunk, apply it set-based, record results, repeat.

A chunk is one transaction:
1. *claim* — up to ``chunk_size`` pending details of the batch, row-locked with
   ``FOR UPDATE SKIP LOCKED`` (on PostgreSQL; SQLite's single writer serialises), so
   concurrent workers never take the same items; the row locks *are* the claim;
2. *apply* — run the operation on the whole chunk with a handful of bulk statements;
3. *record* — write every detail's result, bump the batch counters once, commit.

Effects, results and the claim commit together or not at all: a worker that dies
mid-chunk (kill -9, lost connection, shutdown) leaves its items pending and untouched,
and any worker can take them at once — no lease to wait out, nothing applied twice.
A consequence: details are never *committed* as ``running``; an item being applied is
``pending`` to everyone else until its chunk commits.

If the bulk apply raises, the chunk rolls back and is re-run one item per transaction,
so a bad item fails alone (no SAVEPOINT storms: PostgreSQL's subtransaction cache
holds 64). An item whose own transaction raises a transient error (deadlock,
serialization failure, lock timeout: ``errors.failure_code``) is tried again at once,
``IN_PASS_RETRIES`` times within its retries, before it is recorded failed.

How a chunk is claimed and applied (fused statement, claim + ``apply``, one item per
transaction) is ``app.operations.pipeline.strategy_for``'s choice; every way records
its outcomes with ``details.record_outcomes``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Integer, Table, column, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.batches import details, monitor, rate
from app.db.base import utcnow
from app.domain import RUNNABLE, BatchStatus, DetailStatus, ErrorCode, Outcome, Wakeup, may_retry
from app.errors import failure_code
from app.models import Batch, BatchDetail
from app.operations import BatchRun, Operation, WorkItem, get_operation
from app.operations.pipeline import Stage, Strategy, strategy_for
from app.operations.pipeline_sql import CLAIM_AND_APPLY
from app.operations.registry import BulkSql
from app.runtime.context import JobContext

log = logging.getLogger("batchd.executor")

_details = cast(Table, BatchDetail.__table__)
SEEDING_POLL_S = 0.02
"""How soon an executor that caught up with seeding looks again (an empty claim is cheap)."""
IN_PASS_RETRIES = 1
"""Transient failures of one item retried at once, in the same pass (each counts in its
``retry_count``): a deadlock victim usually passes on the next try. Only one, so a
longer cause (a lock held for minutes) leaves retries to the auto-retry cron."""


@dataclass
class Chunk:
    run: BatchRun
    op: Operation
    items: list[WorkItem]
    retry_counts: dict[int, int]
    max_retries: int


@dataclass
class ChunkResult:
    counts: Counter[DetailStatus]
    over_threshold: bool = False
    op_type: str = ""


@dataclass
class Turn:
    """What one pass of the loop saw: the chunk's result (None: nothing claimed), and
    the batch's status and priority."""

    result: ChunkResult | None
    status: str
    priority: str


async def execute(ctx: JobContext, batch_id: int) -> None:
    """The execute job: chunks until nothing is pending, the batch stops running, the
    process shuts down, or the time slice ends (then it re-enqueues itself)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.settings.slice_seconds
    limited = await rate.is_limited(ctx, batch_id)  # fixed at creation: read once
    while not ctx.stopping.is_set():
        grant = await rate.pace(ctx, batch_id) if limited else None
        if grant is not None and ctx.stopping.is_set():  # shut down while waiting
            await rate.refund(ctx, batch_id, grant, 0)
            break
        started = loop.time()
        async with ctx.semaphore:
            turn = await run_next_chunk(ctx, batch_id, limit=grant.items if grant else None)
        if grant is not None:
            used = sum(turn.result.counts.values()) if turn.result else 0
            await rate.refund(ctx, batch_id, grant, used)
        if turn.result is not None:
            metrics.chunk_done(turn.result.op_type, loop.time() - started, turn.result.counts)
        if turn.result is None:
            if turn.status != BatchStatus.SEEDING:
                break
            if loop.time() > deadline:  # details still coming: hand back, come again
                await ctx.queue.enqueue(Wakeup("execute", batch_id, turn.priority))
                return
            await asyncio.sleep(min(ctx.settings.poll_time, SEEDING_POLL_S))
            continue
        await ctx.progress.publish(batch_id)
        if turn.result.over_threshold:
            await monitor.abort(ctx, batch_id)
            return
        if loop.time() > deadline:
            await ctx.queue.enqueue(Wakeup("execute", batch_id, turn.priority))
            return
    if not ctx.stopping.is_set():
        await monitor.finalize_if_done(ctx, batch_id)


async def run_next_chunk(
    ctx: JobContext, batch_id: int, *, fused: bool = True, limit: int | None = None
) -> Turn:
    """One chunk, one transaction, claimed and applied as ``strategy_for`` says (``fused``
    False: the fused statement failed, claim plainly). ``limit``: claim at most this
    many (rate limit)."""
    chunk: Chunk | None = None
    priority, status = "normal", "missing"
    try:
        async with ctx.unit() as session:
            batch = (
                await session.execute(
                    select(
                        Batch.status,
                        Batch.type,
                        Batch.creator_id,
                        Batch.params,
                        Batch.chunk_size,
                        Batch.max_retries,
                        Batch.priority,
                    ).where(Batch.id == batch_id)
                )
            ).one_or_none()
            if batch is None:
                return Turn(None, status, priority)
            priority, status = batch.priority, batch.status
            if batch.status not in RUNNABLE:
                return Turn(None, batch.status, batch.priority)
            run = BatchRun(batch_id, batch.creator_id, batch.params or {})
            size = min(batch.chunk_size, limit or batch.chunk_size)
            op = get_operation(batch.type)
            strategy = strategy_for(op, session.get_bind().dialect.name, Stage.EXECUTE)
            use_bulk = fused and strategy is Strategy.EXECUTE_FUSED
            bulk = await op.bulk_sql(session, run) if use_bulk else None
            applied = 0
            if bulk is not None:
                claim = _claim_and_apply(batch_id, size, bulk)
                rows = list((await session.execute(claim)).all())
                applied = rows[0].applied
                rows = [r for r in rows if r.id is not None]
            else:
                rows = list((await session.execute(_pending(batch_id, size))).all())
            if not rows and not applied:
                return Turn(None, batch.status, batch.priority)
            chunk = Chunk(
                run=run,
                op=op,
                items=[WorkItem(r.id, r.item_id, r.payload) for r in rows],
                retry_counts={r.id: r.retry_count for r in rows},
                max_retries=batch.max_retries,
            )
            if strategy is not Strategy.ISOLATED:
                result = await _apply(session, chunk, chunk.items, applied=applied)
                return Turn(result, batch.status, batch.priority)
    except Exception as exc:
        if chunk is None:
            if fused and not _lost_connection(exc):
                # The fast path itself failed: claim and apply the ordinary way.
                log.warning("batch %s: fused chunk failed (%s); claiming plainly", batch_id, exc)
                return await run_next_chunk(ctx, batch_id, fused=False, limit=limit)
            raise
        if _lost_connection(exc):
            # Not the items' fault: the rollback handed them back untouched.
            log.warning("batch %s: database connection lost; chunk left pending", batch_id)
            lost = ChunkResult(Counter(), op_type=chunk.op.type)
            return Turn(lost, BatchStatus.RUNNING, priority)
        log.warning("batch %s: bulk chunk failed (%s); isolating items", batch_id, exc)
        return Turn(await _isolate(ctx, chunk), BatchStatus.RUNNING, priority)
    # ``Strategy.ISOLATED`` (forced by a test): the claim ended with its transaction; each
    # item is applied in its own, as after a failed chunk.
    assert chunk is not None
    return Turn(await _isolate(ctx, chunk), status, priority)


def _claim_and_apply(batch_id: int, limit: int, bulk: BulkSql) -> Any:
    """One statement: claim up to ``limit`` pending details (``SKIP LOCKED``), apply the
    operation's fast path to their items and mark the applied ones ``success``. Returns
    the claimed details that were *not* applied (for ``apply`` to decide), each row
    carrying the number applied (one row with a NULL id when all or none were).

    An item listed twice is recorded once (the other detail goes to ``apply``, which
    finds it already done: ignored). Rows are matched with
    ``id = ANY(ARRAY(subquery))`` so the generic plan of this prepared statement always
    looks them up by primary key: a join would let the planner pick a sequential scan of
    every detail."""
    return (
        text(CLAIM_AND_APPLY.format(ctes=bulk.ctes))
        .bindparams(**bulk.params, batch_id=batch_id, limit=limit, finished=utcnow())
        .columns(
            _details.c.id,
            _details.c.item_id,
            _details.c.payload,
            _details.c.retry_count,
            column("applied", Integer),
        )
    )


def _pending(batch_id: int, limit: int, detail_id: int | None = None) -> Any:
    """Pending details, row-locked, skipping rows another worker holds."""
    stmt = select(
        _details.c.id, _details.c.item_id, _details.c.payload, _details.c.retry_count
    ).where(_details.c.batch_id == batch_id, _details.c.status == DetailStatus.PENDING)
    if detail_id is not None:
        stmt = stmt.where(_details.c.id == detail_id)
    return stmt.order_by(_details.c.id).limit(limit).with_for_update(skip_locked=True)


async def _isolate(ctx: JobContext, chunk: Chunk) -> ChunkResult:
    """One transaction per item, so one bad item never fails another."""
    total: Counter[DetailStatus] = Counter()
    over = False
    for item in chunk.items:
        result = await _isolate_one(ctx, chunk, item)
        if result is not None:
            total.update(result.counts)
            over = over or result.over_threshold
    return ChunkResult(total, over, chunk.op.type)


async def _isolate_one(ctx: JobContext, chunk: Chunk, item: WorkItem) -> ChunkResult | None:
    """One item in its own transaction; a transient failure is tried again at once
    (``IN_PASS_RETRIES``, within ``max_retries``). None: not ours any more, or left
    pending (lost connection) for the next pass."""
    for attempt in range(IN_PASS_RETRIES + 1):
        try:
            async with ctx.unit() as session:
                if not await _still_pending(session, chunk, item):
                    return None
                return await _apply(session, chunk, [item])
        except Exception as exc:
            if _lost_connection(exc):
                return None  # left pending; the next pass takes it
            code = failure_code(exc)
            count = chunk.retry_counts[item.detail_id]
            if (
                code is not ErrorCode.TRANSIENT
                or attempt == IN_PASS_RETRIES
                or not may_retry(count, chunk.max_retries)
            ):
                return await _record_crash(ctx, chunk, item, exc, code)
            log.info(
                "batch %s item %s: transient error; retrying it", chunk.run.batch_id, item.item_id
            )
            await _count_retry(ctx, chunk, item)
    return None  # pragma: no cover - the last attempt always returns


async def _count_retry(ctx: JobContext, chunk: Chunk, item: WorkItem) -> None:
    """An in-pass retry counts as one: committed before the retry, so a retry that
    raises again cannot roll the count back."""
    chunk.retry_counts[item.detail_id] += 1
    async with ctx.unit() as session:
        await session.execute(
            update(_details)
            .where(_details.c.id == item.detail_id, _details.c.status == DetailStatus.PENDING)
            .values(retry_count=chunk.retry_counts[item.detail_id])
        )


async def _still_pending(session: AsyncSession, chunk: Chunk, item: WorkItem) -> bool:
    rows = await session.execute(_pending(chunk.run.batch_id, 1, item.detail_id))
    return rows.first() is not None


async def _apply(
    session: AsyncSession, chunk: Chunk, items: list[WorkItem], *, applied: int = 0
) -> ChunkResult:
    """Apply the operation to claimed items and record the results, same transaction.
    ``applied``: items the fused fast path already applied and recorded."""
    outcomes = await chunk.op.apply(session, chunk.run, items) if items else []
    return await _record(session, chunk, items, outcomes, applied=applied)


async def _record(
    session: AsyncSession,
    chunk: Chunk,
    items: list[WorkItem],
    outcomes: list[Outcome],
    *,
    applied: int = 0,
) -> ChunkResult:
    counts, row = await details.record_outcomes(
        session,
        chunk.op,
        chunk.run,
        items,
        outcomes,
        retry_counts=chunk.retry_counts,
        max_retries=chunk.max_retries,
        applied=applied,
    )
    return ChunkResult(counts, monitor.over_threshold(row), chunk.op.type)


_CRASH_MESSAGES = {
    ErrorCode.TRANSIENT: "Item {} could not be applied: the database gave up on it for "
    "now (a deadlock or a timeout); it can be retried.",
    ErrorCode.INTERNAL: "Item {} could not be applied because of an unexpected error.",
}


async def _record_crash(
    ctx: JobContext, chunk: Chunk, item: WorkItem, exc: Exception, code: ErrorCode
) -> ChunkResult:
    """An item whose own transaction raised: it fails alone, ``transient`` or
    ``internal`` (``errors.failure_code``), with a sentence a user understands. The
    database's own text goes to the log only: it may name tables, values or other
    people's data."""
    log.warning("batch %s item %s failed: %s", chunk.run.batch_id, item.item_id, _short(exc))
    outcome = Outcome.failed(code, _CRASH_MESSAGES[code].format(item.item_id))
    async with ctx.unit() as session:
        if not await _still_pending(session, chunk, item):
            return ChunkResult(Counter(), op_type=chunk.op.type)
        return await _record(session, chunk, [item], [outcome])


def _lost_connection(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else exc.__class__.__name__
    return first[:300]
