"""Creating details (with their locks) and keeping batch counters equal to detail counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import locks
from app.db.base import utcnow
from app.db.bulk import insert_rows
from app.models import Batch, BatchDetail
from app.operations import Operation

_details = cast(Table, BatchDetail.__table__)
INSERT_PAGE = 5_000


async def create_details(
    session: AsyncSession,
    batch: Batch,
    op: Operation,
    item_ids: Sequence[int],
    *,
    rows: Sequence[int | None] | None = None,
    payloads: Sequence[dict[str, Any] | None] | None = None,
) -> int:
    """Insert one pending detail per item (locking items for locking operations); an item
    held by another batch becomes a failed detail at once. Returns the number failed."""
    failed = 0
    for start in range(0, len(item_ids), INSERT_PAGE):
        page = item_ids[start : start + INSERT_PAGE]
        held = await locks.acquire(session, batch.id, page) if op.locks_items else {}
        now = utcnow()
        values = []
        for offset, item_id in enumerate(page):
            i = start + offset
            holder = held.get(item_id)
            values.append(
                {
                    "batch_id": batch.id,
                    "item_id": item_id,
                    "row": rows[i] if rows else None,
                    "payload": payloads[i] if payloads else None,
                    "status": "failed" if holder else "pending",
                    "error": f"Task {item_id} is locked by batch {holder}." if holder else None,
                    "retry_count": 0,
                    "finished_at": now if holder else None,
                }
            )
            failed += 1 if holder else 0
        await insert_rows(session, _details, values)
    return failed


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
