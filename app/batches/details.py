"""Creating details (with their locks) and keeping batch counters equal to detail counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Select, Table, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches.resolve import Listed
from app.batches.state import DetailStatus
from app.db.base import utcnow
from app.db.bulk import insert_rows, update_rows
from app.engine.approval import Outcome
from app.models import Batch, BatchDetail, User
from app.operations import Operation

_details = cast(Table, BatchDetail.__table__)
INSERT_PAGE = 5_000


@dataclass(frozen=True)
class Seeded:
    """Details written for one page of items: how many, the highest item id, and how
    many were decided at once (failed or ignored, never locked)."""

    count: int
    last_item_id: int | None
    failed: int = 0
    ignored: int = 0


async def create_details(
    session: AsyncSession, batch: Batch, creator: User, op: Operation, listed: Listed
) -> Seeded:
    """Insert one detail per listed item: pending, with its item locked for a locking
    operation — or already decided: a pre-failed row with its error, or an item the
    creator may not lock (``ItemLock.acquire``) with the reason (failed or ignored)."""
    decided: Counter[str] = Counter()
    ids = listed.item_ids
    for start in range(0, len(ids), INSERT_PAGE):
        stop = min(start + INSERT_PAGE, len(ids))
        pre = {
            i: listed.errors[i] for i in range(start, stop) if listed.errors and listed.errors[i]
        }
        lockable = [ids[i] for i in range(start, stop) if i not in pre]
        refused = await op.lock.acquire(session, batch.id, creator, lockable) if op.lock else {}
        now = utcnow()
        values = []
        for i in range(start, stop):
            outcome = Outcome("failed", pre[i]) if i in pre else refused.get(ids[i])
            values.append(
                {
                    "batch_id": batch.id,
                    "item_id": ids[i],
                    "row": listed.rows[i] if listed.rows else None,
                    "payload": listed.payloads[i] if listed.payloads else None,
                    "status": outcome.status if outcome else DetailStatus.PENDING,
                    "error": outcome.error if outcome else None,
                    "retry_count": 0,
                    "finished_at": now if outcome else None,
                }
            )
            if outcome:
                decided[outcome.status] += 1
        await insert_rows(session, _details, values)
    return Seeded(len(ids), max(ids, default=None), decided["failed"], decided["ignored"])


async def create_details_from(
    session: AsyncSession, batch: Batch, creator: User, op: Operation, page: Select[Any]
) -> Seeded:
    """Seed the items ``page`` selects (one id column): one pending detail each, locks as
    in ``create_details``.

    On PostgreSQL the ids never travel through Python for an operation without locks:
    one ``INSERT … SELECT`` answers only the count and the highest id; a locking one
    gets the ids back (``RETURNING``) for the lock ``UPDATE``. (SQLite runs in-process,
    so it keeps the portable path.)"""
    if session.get_bind().dialect.name != "postgresql":
        ids = list(await session.scalars(page))
        return await create_details(session, batch, creator, op, Listed(ids))
    sub = page.subquery()
    insert_page = insert(_details).from_select(
        ["batch_id", "item_id", "status", "retry_count"],
        select(
            literal(batch.id, BigInteger), sub.c.id, literal("pending"), literal(0, BigInteger)
        ).order_by(sub.c.id),
    )
    if op.lock is None:
        ins = insert_page.returning(_details.c.item_id).cte("ins")
        count, last = (await session.execute(select(func.count(), func.max(ins.c.item_id)))).one()
        return Seeded(int(count), last)
    inserted = (
        await session.execute(insert_page.returning(_details.c.id, _details.c.item_id))
    ).all()
    detail_of = {item_id: detail_id for detail_id, item_id in inserted}
    refused = await op.lock.acquire(session, batch.id, creator, list(detail_of))
    await update_rows(
        session,
        _details,
        [
            {"id": detail_of[item_id], "status": outcome.status, "error": outcome.error}
            for item_id, outcome in refused.items()
        ],
        constants={"finished_at": utcnow()},
    )
    decided = Counter(o.status for o in refused.values())
    return Seeded(
        len(detail_of), max(detail_of, default=None), decided["failed"], decided["ignored"]
    )


async def status_counts(session: AsyncSession, batch_id: int) -> dict[str, int]:
    rows = await session.execute(
        select(BatchDetail.status, func.count())
        .where(BatchDetail.batch_id == batch_id)
        .group_by(BatchDetail.status)
    )
    return {status: int(n) for status, n in rows}


def apply_counts(batch: Batch, counts: dict[str, int]) -> None:
    """Set the counters (and total) from the details themselves: used when a batch
    reaches a final state, so the final numbers are the rows, whatever happened."""
    batch.success = counts.get("success", 0)
    batch.failed = counts.get("failed", 0)
    batch.ignored = counts.get("ignored", 0)
    batch.cancelled = counts.get("cancelled", 0)
    batch.total = sum(counts.values())
    # The error file is built from the failed details when it is downloaded (always the
    # current one, also after a retry finishes); a finished batch names it.
    batch.error_file = f"/api/v1/batches/{batch.id}/error-file" if batch.failed else None
