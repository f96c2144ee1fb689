"""``max_items_per_second``: one batch's throughput ceiling across every worker.

The budget lives in the batch row, where every worker sees it: ``rate_next_at`` is the
moment (epoch seconds) at which the next slot of the batch's schedule begins. Before a
chunk, an executor reserves ``n`` items with one conditional UPDATE — the slot starts at
``max(rate_next_at, now)`` and the next one ``n / rate`` seconds later — then waits for
its slot outside the coroutine cap (so other batches are not slowed) and claims at most
``n`` items. Chunks shrink to about ``PACE_WINDOW_S`` of budget, so the rate stays even
over short spans; what a chunk did not use (it found fewer pending items) is handed
back. A reservation touches the heartbeat, and so does a long wait, so recovery never
mistakes a patient batch for a stuck one. Workers' clocks are assumed to agree (NTP),
as they must for the heartbeat already.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from sqlalchemy import case, select, update

from app.db.base import utcnow
from app.domain import RUNNABLE
from app.models import Batch
from app.runtime.context import JobContext

PACE_WINDOW_S = 0.2
"""A rate-limited chunk holds about this much of the batch's budget."""
HEARTBEAT_S = 5.0
"""A long wait touches the batch's heartbeat this often."""


@dataclass(frozen=True)
class Grant:
    items: int
    rate: float
    ends_at: float
    """``rate_next_at`` right after this reservation: a refund applies only while no
    later reservation has been made (else it would overlap the next slot)."""


async def is_limited(ctx: JobContext, batch_id: int) -> bool:
    """Whether the batch has a rate limit (set at creation, never changed): executors
    ask once per job, not before every chunk."""
    async with ctx.sessionmaker() as session:
        rate = await session.scalar(select(Batch.max_items_per_second).where(Batch.id == batch_id))
    return rate is not None


async def pace(ctx: JobContext, batch_id: int) -> Grant | None:
    """Reserve the next slot of a rate-limited batch and wait for it; None when the
    batch has no limit (or is not runnable: the chunk's own check will stop)."""
    async with ctx.unit() as session:
        row = (
            await session.execute(
                select(Batch.max_items_per_second, Batch.chunk_size, Batch.status).where(
                    Batch.id == batch_id
                )
            )
        ).one_or_none()
        if row is None or row.max_items_per_second is None or row.status not in RUNNABLE:
            return None
        rate = float(row.max_items_per_second)
        items = min(row.chunk_size, max(1, math.ceil(rate * PACE_WINDOW_S)))
        now = time.time()
        next_at = await session.scalar(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                rate_next_at=case((Batch.rate_next_at > now, Batch.rate_next_at), else_=now)
                + items / rate,
                updated_at=utcnow(),
            )
            .returning(Batch.rate_next_at)
        )
    if next_at is None:
        return None
    await _wait_until(ctx, batch_id, next_at - items / rate)
    return Grant(items, rate, next_at)


async def refund(ctx: JobContext, batch_id: int, grant: Grant, used: int) -> None:
    """Hand back the part of a reservation the chunk did not use — only if it is still
    the last one made (a refund must never pull a later slot forward)."""
    unused = grant.items - used
    if unused <= 0:
        return
    async with ctx.unit() as session:
        await session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.rate_next_at == grant.ends_at)
            .values(rate_next_at=Batch.rate_next_at - unused / grant.rate)
        )


async def _wait_until(ctx: JobContext, batch_id: int, start: float) -> None:
    while not ctx.stopping.is_set():
        left = start - time.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, HEARTBEAT_S))
        if start - time.time() > 0:
            async with ctx.unit() as session:
                await session.execute(
                    update(Batch).where(Batch.id == batch_id).values(updated_at=utcnow())
                )
