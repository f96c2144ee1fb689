"""Item locks: an operation may declare a lock its batch holds on its
items from detail creation until the item succeeds, is ignored or cancelled, fails in a
way no automatic retry touches (not ``retryable``), or is exhausted. ``ItemLock`` is
the seam; ``TaskLock`` (``tasks.locked_by_batch_id``) is the one ``task.approve``
declares."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import cast

from sqlalchemy import Table, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.bulk import id_in
from app.domain import Outcome
from app.models import BatchDetail, Task, User, awaiting_auto_retry
from app.workflow.approval import task_gate

_tasks = cast(Table, Task.__table__)


class ItemLock(abc.ABC):
    """What the batch engine asks of an operation's lock."""

    @abc.abstractmethod
    async def acquire(
        self, session: AsyncSession, batch_id: int, creator: User, item_ids: Sequence[int]
    ) -> dict[int, Outcome]:
        """Lock what the creator may lock; return the outcome of every other item."""

    @abc.abstractmethod
    async def release(self, session: AsyncSession, batch_id: int, item_ids: Sequence[int]) -> None:
        """Release the locks of these items (done, ignored, cancelled or exhausted)."""

    @abc.abstractmethod
    async def release_all(
        self, session: AsyncSession, batch_id: int, *, keep_retryable_of: int | None = None
    ) -> None:
        """Release every lock of the batch, except (optionally) those of failed items
        that may still be retried."""


class TaskLock(ItemLock):
    async def acquire(
        self, session: AsyncSession, batch_id: int, creator: User, item_ids: Sequence[int]
    ) -> dict[int, Outcome]:
        """Lock the tasks among ``item_ids`` that ``creator`` may decide (their own pending
        tasks, free of other batches), and return, for every other item, the outcome it
        gets at once (``task_gate``: missing or hidden, already decided, not theirs, locked
        by another batch). Such an item is never locked, so a batch cannot block another
        user's work."""
        if not item_ids:
            return {}
        ids = list(item_ids)
        locked = set(
            await session.scalars(
                update(_tasks)
                .where(
                    id_in(session, _tasks.c.id, ids),
                    _tasks.c.locked_by_batch_id.is_(None),
                    _tasks.c.status == "pending",
                    _tasks.c.assignee_id == creator.id,
                )
                .values(locked_by_batch_id=batch_id)
                .returning(_tasks.c.id)
            )
        )
        rest = [i for i in ids if i not in locked]
        if not rest:
            return {}
        rows = {
            r.id: r
            for r in await session.execute(
                select(
                    _tasks.c.id,
                    _tasks.c.status.label("task_status"),
                    _tasks.c.assignee_id,
                    _tasks.c.locked_by_batch_id,
                ).where(id_in(session, _tasks.c.id, rest))
            )
        }
        refused: dict[int, Outcome] = {}
        for item_id in rest:
            row = rows.get(item_id)
            if row is not None and row.locked_by_batch_id == batch_id:
                continue  # ours already (a retry re-locking its items)
            outcome = task_gate(
                item_id,
                row,
                actor_id=creator.id,
                actor_is_admin=creator.is_admin,
                batch_id=batch_id,
            )
            if outcome is not None:
                refused[item_id] = outcome
        return refused

    async def release(self, session: AsyncSession, batch_id: int, item_ids: Sequence[int]) -> None:
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
        self, session: AsyncSession, batch_id: int, *, keep_retryable_of: int | None = None
    ) -> None:
        """Release every lock the batch holds. With ``keep_retryable_of=max_retries``, keep
        the locks of failed items the auto-retry cron may still retry (retryable, not
        exhausted), so nobody else takes them between the batch finishing and its retry."""
        stmt = update(_tasks).where(_tasks.c.locked_by_batch_id == batch_id)
        if keep_retryable_of is not None:
            still_retryable = exists().where(
                and_(
                    BatchDetail.batch_id == batch_id,
                    BatchDetail.item_id == _tasks.c.id,
                    awaiting_auto_retry(keep_retryable_of),
                )
            )
            stmt = stmt.where(~still_retryable)
        await session.execute(stmt.values(locked_by_batch_id=None))


TASK_LOCK = TaskLock()
