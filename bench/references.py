"""The two references batchd is measured against, on the same rows:

- **baseline**: one transaction per item through the engine's own code
  (``approve_tasks`` with one ``ApprovalInput``; ``SuspendInstances().apply`` with one
  ``WorkItem``), sequential — the Camunda 7 / PHP per-job model. No batch bookkeeping
  at all, so it is a generous baseline.
- **concurrent baseline** (the PHP model, faithfully): one transaction per item that
  applies it through the same engine code, writes that item's result as a
  ``batch_details`` row and bumps the batch's counters (``UPDATE batches SET success =
  success + 1 …``), run concurrently under ``asyncio.Semaphore(BATCH_MAX_CONCURRENCY)``
  on one pool of that many connections (the PHP service's coroutine cap).
- **ceiling**: the minimal set-based SQL for the same state changes on plain asyncpg,
  no framework, in chunks of batchd's chunk size, one transaction per chunk, either on
  one connection or on ``parallel`` connections taking chunks from a shared queue.
  Also without any batch bookkeeping: it is what the database can do at best.
  Ceilings exist for ``task.approve``, ``instance.suspend``, ``instance.terminate`` and
  ``instance.set_variables``; baselines for the first two.
- **raw concurrent baseline** (``task.approve`` only): the PHP model without any
  framework — per item one raw asyncpg transaction with the approve ceiling's statement
  for that one task, its ``batch_details`` row and the batch counter update,
  ``concurrency`` at a time on a pool of that many connections. What per-item
  transactions cost at best, so batchd's set-based advantage is measured honestly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.session import transaction
from app.domain import BatchRun, Outcome, WorkItem
from app.models import Batch, BatchDetail
from app.operations.instances import SuspendInstances
from app.workflow.approval import ApprovalInput, approve_tasks
from bench.data import APPROVE_PARAMS

# --------------------------------------------------------------------------- baseline


async def baseline_approve(
    sm: async_sessionmaker[AsyncSession], actor_id: int, task_ids: Sequence[int]
) -> float:
    """Seconds to approve ``task_ids`` one transaction each; raises if any fails."""
    form = APPROVE_PARAMS["form_data"]
    t0 = time.perf_counter()
    for task_id in task_ids:
        async with transaction(sm) as session:
            [outcome] = await approve_tasks(
                session, actor_id, [ApprovalInput(task_id, "approve", None, dict(form))]
            )
        if outcome.status != "success":
            raise RuntimeError(f"baseline approve of task {task_id}: {outcome}")
    return time.perf_counter() - t0


async def baseline_suspend(
    sm: async_sessionmaker[AsyncSession], admin_id: int, instance_ids: Sequence[int]
) -> float:
    op = SuspendInstances()
    run = BatchRun(batch_id=0, creator_id=admin_id, params={})
    t0 = time.perf_counter()
    for instance_id in instance_ids:
        async with transaction(sm) as session:
            [outcome] = await op.apply(session, run, [WorkItem(0, instance_id)])
        if outcome.status != "success":
            raise RuntimeError(f"baseline suspend of instance {instance_id}: {outcome}")
    return time.perf_counter() - t0


# --------------------------------------------------------------- concurrent baseline

ItemFn = Callable[[AsyncSession, int], Awaitable[Outcome]]


async def _baseline_batch(sm: async_sessionmaker[AsyncSession], type_: str, creator: int) -> int:
    """The batch row the per-item transactions report into (created outside the timing,
    as the PHP service's batch creation would be)."""
    async with transaction(sm) as session:
        batch = Batch(
            type=type_, status="running", creator_id=creator, params={}, chunk_size=1, total=0
        )
        session.add(batch)
        await session.flush()
        return batch.id


async def _concurrent(
    sm: async_sessionmaker[AsyncSession],
    batch_id: int,
    item_ids: Sequence[int],
    concurrency: int,
    apply_one: ItemFn,
) -> float:
    """Seconds to run every item in its own transaction — apply, its detail row, the
    batch counters — at most ``concurrency`` at a time; raises if any item fails."""
    gate = asyncio.Semaphore(concurrency)

    async def one(item_id: int) -> None:
        async with gate, transaction(sm) as session:
            outcome = await apply_one(session, item_id)
            session.add(
                BatchDetail(
                    batch_id=batch_id,
                    item_id=item_id,
                    status=outcome.status,
                    error=outcome.error,
                    retry_count=0,
                    finished_at=utcnow(),
                )
            )
            await session.flush()
            column = {"success": Batch.success, "ignored": Batch.ignored}.get(
                outcome.status, Batch.failed
            )
            await session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values({column: column + 1, Batch.updated_at: utcnow()})
            )
        if outcome.status != "success":
            raise RuntimeError(f"concurrent baseline, item {item_id}: {outcome}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in item_ids))
    return time.perf_counter() - t0


async def concurrent_baseline_approve(
    sm: async_sessionmaker[AsyncSession], actor_id: int, task_ids: Sequence[int], concurrency: int
) -> float:
    form = APPROVE_PARAMS["form_data"]
    batch_id = await _baseline_batch(sm, "task.approve", actor_id)

    async def apply_one(session: AsyncSession, task_id: int) -> Outcome:
        [outcome] = await approve_tasks(
            session,
            actor_id,
            [ApprovalInput(task_id, "approve", None, dict(form))],
            batch_id=batch_id,
        )
        return outcome

    return await _concurrent(sm, batch_id, task_ids, concurrency, apply_one)


async def concurrent_baseline_suspend(
    sm: async_sessionmaker[AsyncSession],
    admin_id: int,
    instance_ids: Sequence[int],
    concurrency: int,
) -> float:
    op = SuspendInstances()
    batch_id = await _baseline_batch(sm, "instance.suspend", admin_id)
    run = BatchRun(batch_id=batch_id, creator_id=admin_id, params={})

    async def apply_one(session: AsyncSession, instance_id: int) -> Outcome:
        [outcome] = await op.apply(session, run, [WorkItem(0, instance_id)])
        return outcome

    return await _concurrent(sm, batch_id, instance_ids, concurrency, apply_one)


# --------------------------------------------------------------------------- ceiling

CEILING_SUSPEND = """
WITH moved AS (
    UPDATE process_instances SET status = 'suspended', updated_at = now()
    WHERE id = ANY($1::bigint[]) AND status = 'active'
    RETURNING id
)
INSERT INTO process_logs (instance_id, actor_id, action, created_at)
SELECT id, $2, 'instance.suspend', now() FROM moved
"""

CEILING_APPROVE = """
WITH done AS (
    UPDATE tasks SET status = 'completed', decision = 'approve', comment = NULL,
                     completed_at = now(), locked_by_batch_id = NULL
    WHERE id = ANY($1::bigint[]) AND status = 'pending'
    RETURNING id, instance_id
), merged AS (
    UPDATE process_instances p
    SET form_data = p.form_data || $2::jsonb, current_node_id = 'finance', updated_at = now()
    FROM done WHERE p.id = done.instance_id AND p.status = 'active'
    RETURNING p.id
), next_tasks AS (
    INSERT INTO tasks (instance_id, node_id, assignee_id, status, created_at)
    SELECT id, 'finance', $3, 'pending', now() FROM merged
)
INSERT INTO process_logs (instance_id, task_id, actor_id, action, created_at)
SELECT instance_id, id, $4, 'task.approved', now() FROM done
"""

CEILING_TERMINATE = """
WITH moved AS (
    UPDATE process_instances SET status = 'terminated', updated_at = now()
    WHERE id = ANY($1::bigint[]) AND status IN ('active', 'suspended')
    RETURNING id
), cancelled AS (
    UPDATE tasks SET status = 'cancelled', locked_by_batch_id = NULL, completed_at = now()
    WHERE instance_id = ANY(ARRAY(SELECT id FROM moved)) AND status = 'pending'
)
INSERT INTO process_logs (instance_id, actor_id, action, message, created_at)
SELECT id, $2, 'instance.terminate', $3, now() FROM moved
"""

CEILING_SET_VARIABLES = """
WITH merged AS (
    UPDATE process_instances SET variables = variables || $2::jsonb, updated_at = now()
    WHERE id = ANY($1::bigint[]) AND status IN ('active', 'suspended')
      AND NOT (variables @> $2::jsonb)
    RETURNING id
)
INSERT INTO process_logs (instance_id, actor_id, action, message, created_at)
SELECT id, $3, 'instance.set_variables', $4, now() FROM merged
"""

RAW_DETAIL = """
INSERT INTO batch_details (batch_id, item_id, status, retry_count, finished_at)
VALUES ($1, $2, 'success', 0, now())
"""
RAW_COUNTER = "UPDATE batches SET success = success + 1, updated_at = now() WHERE id = $1"


async def raw_concurrent_baseline_approve(
    dsn: str,
    sm: async_sessionmaker[AsyncSession],
    manager_id: int,
    finance_id: int,
    task_ids: Sequence[int],
    concurrency: int,
    before_close: Callable[[], None] | None = None,
) -> float:
    """Seconds to approve ``task_ids`` one raw asyncpg transaction each (the approve
    ceiling's statement for one task + its detail row + the batch counter),
    ``concurrency`` at a time on a pool of that many connections (the PHP service's
    ``Semaphore(10)`` coroutines). The batch row is created before the timing."""
    form = json.dumps(APPROVE_PARAMS["form_data"])
    batch_id = await _baseline_batch(sm, "task.approve", manager_id)
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        gate = asyncio.Semaphore(concurrency)

        async def one(task_id: int) -> None:
            async with gate, pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    CEILING_APPROVE, [task_id], form, finance_id, manager_id
                )
                if status != "INSERT 0 1":
                    raise RuntimeError(f"raw baseline approve of task {task_id}: {status}")
                await conn.execute(RAW_DETAIL, batch_id, task_id)
                await conn.execute(RAW_COUNTER, batch_id)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in task_ids))
        elapsed = time.perf_counter() - t0
        if before_close is not None:
            before_close()  # the pool's backends take their CPU time with them
        return elapsed
    finally:
        await pool.close()


ChunkFn = Callable[[asyncpg.Connection, list[int]], Awaitable[None]]


async def _chunked(
    dsn: str,
    select_ids: str,
    chunk: int,
    parallel: int,
    fn: ChunkFn,
    before_close: Callable[[], None] | None = None,
) -> float:
    """Seconds to select the ids and run ``fn`` on every chunk (one transaction each).
    ``before_close`` runs while the connections still exist (their backends' CPU time
    is gone once they close)."""
    conns = [await asyncpg.connect(dsn) for _ in range(max(parallel, 1))]
    try:
        t0 = time.perf_counter()
        ids = [r[0] for r in await conns[0].fetch(select_ids)]
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        for start in range(0, len(ids), chunk):
            queue.put_nowait(ids[start : start + chunk])

        async def drain(conn: asyncpg.Connection) -> None:
            while not queue.empty():
                part = queue.get_nowait()
                async with conn.transaction():
                    await fn(conn, part)

        await asyncio.gather(*(drain(c) for c in conns))
        elapsed = time.perf_counter() - t0
        if before_close is not None:
            before_close()
        return elapsed
    finally:
        for c in conns:
            await c.close()


async def ceiling_suspend(
    dsn: str,
    admin_id: int,
    chunk: int,
    parallel: int,
    before_close: Callable[[], None] | None = None,
) -> float:
    async def apply(conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute(CEILING_SUSPEND, ids, admin_id)

    return await _chunked(
        dsn,
        "SELECT id FROM process_instances WHERE definition_key = 'expense' "
        "AND status = 'active' ORDER BY id",
        chunk,
        parallel,
        apply,
        before_close,
    )


async def ceiling_approve(
    dsn: str,
    manager_id: int,
    finance_id: int,
    chunk: int,
    parallel: int,
    before_close: Callable[[], None] | None = None,
) -> float:
    form = json.dumps(APPROVE_PARAMS["form_data"])

    async def apply(conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute(CEILING_APPROVE, ids, form, finance_id, manager_id)

    return await _chunked(
        dsn,
        "SELECT t.id FROM tasks t JOIN process_instances p ON p.id = t.instance_id "
        f"WHERE t.assignee_id = {int(manager_id)} AND t.status = 'pending' "
        "AND t.node_id = 'manager' AND p.definition_key = 'expense' ORDER BY t.id",
        chunk,
        parallel,
        apply,
        before_close,
    )


async def ceiling_terminate(
    dsn: str,
    admin_id: int,
    reason: str,
    chunk: int,
    parallel: int,
    before_close: Callable[[], None] | None = None,
) -> float:
    async def apply(conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute(CEILING_TERMINATE, ids, admin_id, reason)

    return await _chunked(
        dsn,
        "SELECT id FROM process_instances WHERE definition_key = 'expense' "
        "AND status = 'active' ORDER BY id",
        chunk,
        parallel,
        apply,
        before_close,
    )


async def ceiling_set_variables(
    dsn: str,
    admin_id: int,
    variables: dict[str, Any],
    message: str,
    chunk: int,
    parallel: int,
    before_close: Callable[[], None] | None = None,
) -> float:
    patch = json.dumps(variables)

    async def apply(conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute(CEILING_SET_VARIABLES, ids, patch, admin_id, message)

    return await _chunked(
        dsn,
        "SELECT id FROM process_instances WHERE definition_key = 'expense' ORDER BY id",
        chunk,
        parallel,
        apply,
        before_close,
    )
