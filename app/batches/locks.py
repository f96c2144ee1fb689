"""Item locks (DESIGN.md §2): a ``task.approve`` batch holds ``tasks.locked_by_batch_id``
on its items from detail creation until the item succeeds, is ignored or cancelled, or
has failed ``max_retries`` times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, and_, exists, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.bulk import id_in
from app.models import BatchDetail, Task

_tasks = cast(Table, Task.__table__)


async def acquire(session: AsyncSession, batch_id: int, item_ids: Sequence[int]) -> dict[int, int]:
    """Lock the free pending tasks among ``item_ids``; return {task id: holder batch id}
    for the ones another batch holds."""
    if not item_ids:
        return {}
    ids = list(item_ids)
    await session.execute(
        update(_tasks)
        .where(id_in(session, _tasks.c.id, ids), _tasks.c.locked_by_batch_id.is_(None))
        .where(_tasks.c.status == "pending")
        .values(locked_by_batch_id=batch_id)
    )
    held = await session.execute(
        select(Task.id, Task.locked_by_batch_id).where(
            id_in(session, Task.id, ids),
            Task.locked_by_batch_id.is_not(None),
            Task.locked_by_batch_id != batch_id,
        )
    )
    return {task_id: int(holder or 0) for task_id, holder in held}


async def release(session: AsyncSession, batch_id: int, item_ids: Sequence[int]) -> None:
    if item_ids:
        await session.execute(
            update(_tasks)
            # "+ 0" keeps the planner on the primary key: the lock index would make it scan
            # every task the batch holds.
            .where(
                id_in(session, _tasks.c.id, item_ids),
                (_tasks.c.locked_by_batch_id + 0) == batch_id,
            )
            .values(locked_by_batch_id=None)
        )


async def release_all(
    session: AsyncSession, batch_id: int, *, keep_retryable_of: int | None = None
) -> None:
    """Release every lock the batch holds. With ``keep_retryable_of=max_retries``, keep
    the locks of failed items that may still be retried (so nobody else takes them
    between the batch finishing and its retry)."""
    stmt = update(_tasks).where(_tasks.c.locked_by_batch_id == batch_id)
    if keep_retryable_of is not None:
        retryable = exists().where(
            and_(
                BatchDetail.batch_id == batch_id,
                BatchDetail.item_id == _tasks.c.id,
                BatchDetail.status == "failed",
                BatchDetail.retry_count < keep_retryable_of,
            )
        )
        stmt = stmt.where(~retryable)
    await session.execute(stmt.values(locked_by_batch_id=None))


_ADVISORY_NAMESPACE = 0x6264  # "bd": keeps batchd's advisory locks apart from others'


async def exclude_seeding(session: AsyncSession, batch_id: int) -> None:
    """Serialise a transaction that writes a batch's details (a seed page) with one that
    cancels or purges the batch, until the end of the transaction: otherwise a seed page
    committing meanwhile adds pending details (and task locks) that the cancel never saw.
    PostgreSQL: a transaction-level advisory lock. SQLite needs nothing: its writers
    (``BEGIN IMMEDIATE``) already run one at a time."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(CAST(:ns AS INTEGER), CAST(:key AS INTEGER))"),
            {"ns": _ADVISORY_NAMESPACE, "key": batch_id % 2_147_483_647},
        )
