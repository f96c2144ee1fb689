"""Creating details (with their locks) and keeping batch counters equal to detail counts."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import BigInteger, Select, Table, func, insert, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches.resolve import Listed, ListedSource
from app.db.base import utcnow
from app.db.bulk import insert_rows, update_rows
from app.domain import BatchRun, DetailStatus, Outcome
from app.models import Batch, BatchDetail, User
from app.operations import Operation
from app.operations.registry import BulkSql

log = logging.getLogger("batchd.seeding")
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
    success: int = 0
    fused: bool = False
    """``success``: items a fused seed page applied (``create_details_from(…, run=…)``);
    ``fused``: the page was one (only stragglers were left pending)."""


async def create_details(
    session: AsyncSession, batch: Batch, creator: User, op: Operation, listed: ListedSource
) -> Seeded:
    """Insert one detail per listed item, a page at a time: pending, with its item locked
    for a locking operation — or already decided: a pre-failed row with its error, or an
    item the creator may not lock (``ItemLock.acquire``) with the reason (failed or
    ignored)."""
    decided: Counter[str] = Counter()
    count, last = 0, None
    for page in listed.pages(INSERT_PAGE):
        ids, errors = page.item_ids, page.errors
        pre: dict[int, str] = {i: e for i, e in enumerate(errors or []) if e}
        lockable = [ids[i] for i in range(len(ids)) if i not in pre]
        refused = await op.lock.acquire(session, batch.id, creator, lockable) if op.lock else {}
        now = utcnow()
        values = []
        for i, item_id in enumerate(ids):
            outcome = Outcome.failed("invalid", pre[i]) if i in pre else refused.get(item_id)
            values.append(
                {
                    "batch_id": batch.id,
                    "item_id": item_id,
                    "row": page.rows[i] if page.rows else None,
                    "payload": page.payloads[i] if page.payloads else None,
                    "status": outcome.status if outcome else DetailStatus.PENDING,
                    "error": outcome.error if outcome else None,
                    "retry_count": 0,
                    "finished_at": now if outcome else None,
                }
            )
            if outcome:
                decided[outcome.status] += 1
        await insert_rows(session, _details, values)
        count += len(ids)
        last = max(max(ids, default=0), last or 0) or None
    return Seeded(count, last, decided["failed"], decided["ignored"])


async def create_details_from(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    page: Select[Any],
    *,
    run: BatchRun | None = None,
) -> Seeded:
    """Seed the items ``page`` selects (one id column): one pending detail each, locks as
    in ``create_details``.

    On PostgreSQL the ids never travel through Python for an operation without locks:
    one ``INSERT … SELECT`` answers only the count and the highest id; a locking one
    gets the ids back (``RETURNING``) for the lock ``UPDATE``. (SQLite runs in-process,
    so it keeps the portable path.)

    With ``run`` (PostgreSQL, a batch that may run now), an operation that offers it
    is applied to the page as it is seeded: ``fuse_at_seed`` types through their
    ``bulk_sql``, ``task.approve`` through ``apply_at_seed``. Each applied item's detail
    is written once, already ``success``; the rest is seeded as usual (pending, locked)
    for the executor, which decides it and says why. If the fused statement fails, the
    page is seeded plainly."""
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
    if run is not None:
        try:
            async with session.begin_nested():
                fused = await _seed_fused(session, batch, creator, op, page, run)
            if fused is not None:
                return fused
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            # The fast path itself failed: seed this page plainly (the executor applies
            # it item by item if it must), as the executor does with its fused claim.
            log.warning("batch %s: fused seed page failed (%s); seeding plainly", batch.id, exc)
    if op.lock is None:
        ins = insert_page.returning(_details.c.item_id).cte("ins")
        count, last = (await session.execute(select(func.count(), func.max(ins.c.item_id)))).one()
        return Seeded(int(count), last)
    inserted = (
        await session.execute(insert_page.returning(_details.c.id, _details.c.item_id))
    ).all()
    detail_of = {item_id: detail_id for detail_id, item_id in inserted}
    decided = await _lock_pending(session, batch, creator, op, detail_of)
    return Seeded(
        len(detail_of), max(detail_of, default=None), decided["failed"], decided["ignored"]
    )


async def _lock_pending(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    detail_of: dict[int, int],
) -> Counter[str]:
    """Lock the items of just-inserted pending details ({item id: detail id}); a detail
    whose item the creator may not lock takes its outcome at once. Returns the counts
    of those outcomes by status."""
    assert op.lock is not None
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
    return Counter(o.status for o in refused.values())


_SEED_AND_APPLY = """
WITH claimed AS (
    SELECT item_id FROM unnest(CAST(:seed_ids AS BIGINT[])) AS u(item_id)
), {ctes}, seeded AS (
    INSERT INTO batch_details (batch_id, item_id, status, retry_count, finished_at)
    SELECT CAST(:seed_batch AS BIGINT), c.item_id,
           CASE WHEN a.id IS NULL THEN 'pending' ELSE 'success' END, 0,
           CASE WHEN a.id IS NULL THEN NULL ELSE CAST(:seed_now AS TIMESTAMPTZ) END
    FROM claimed AS c LEFT JOIN applied AS a ON a.id = c.item_id
    ORDER BY c.item_id
    RETURNING item_id, status
)
SELECT count(*) AS n, max(item_id) AS last,
       count(*) FILTER (WHERE status = 'success') AS applied
FROM seeded
"""


async def _seed_fused(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    page: Select[Any],
    run: BatchRun,
) -> Seeded | None:
    """The fused seed page, or None when ``op`` offers none."""
    if op.lock is None and op.fuse_at_seed:
        bulk = await op.bulk_sql(session, run)
        return await _seed_and_apply(session, batch, page, bulk) if bulk is not None else None
    if op.lock is not None and op.applies_at_seed:
        return await _seed_locked_and_apply(session, batch, creator, op, page, run)
    return None


_INSERT_DECIDED = """
WITH seeded AS (
    INSERT INTO batch_details (batch_id, item_id, status, retry_count, finished_at)
    SELECT CAST(:batch AS BIGINT), u.item_id, u.status, 0,
           CASE WHEN u.status = 'pending' THEN NULL ELSE CAST(:now AS TIMESTAMPTZ) END
    FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[])) AS u(item_id, status)
    ORDER BY u.item_id
    RETURNING id, item_id, status
)
SELECT id, item_id FROM seeded WHERE status = 'pending'
"""


async def _seed_locked_and_apply(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    page: Select[Any],
    run: BatchRun,
) -> Seeded:
    """A locking type's fused seed page (``task.approve``): ``apply_at_seed`` applies
    what certainly passes; the details are inserted at once with their status (success,
    or pending); only the pending ones are locked (or refused, as when seeding plainly)."""
    ids = list(await session.scalars(page))
    if not ids:
        return Seeded(0, None, fused=True)
    applied = await op.apply_at_seed(session, run, ids)
    statuses = ["success" if i in applied else "pending" for i in ids]
    pending = (
        await session.execute(
            text(_INSERT_DECIDED),
            {"batch": batch.id, "ids": ids, "statuses": statuses, "now": utcnow()},
        )
    ).all()
    detail_of = {item_id: detail_id for detail_id, item_id in pending}
    decided = await _lock_pending(session, batch, creator, op, detail_of)
    return Seeded(
        len(ids), max(ids), decided["failed"], decided["ignored"], len(applied), fused=True
    )


async def _seed_and_apply(
    session: AsyncSession, batch: Batch, page: Select[Any], fused: BulkSql
) -> Seeded:
    """A lock-free type's seed page that also applies the operation's fast path: one
    statement applies it to the page's items and inserts every detail once — ``success``
    for the items applied, ``pending`` for the rest (the executor's ``apply`` decides
    those and says why). Saves writing every detail twice (pending, then its result) and
    claiming it. Same transaction as the page's cursor update, so a crash leaves nothing
    half-done."""
    ids = list(await session.scalars(page))
    if not ids:
        return Seeded(0, None, fused=True)
    stmt = text(_SEED_AND_APPLY.format(ctes=fused.ctes)).bindparams(
        **fused.params, seed_ids=ids, seed_batch=batch.id, seed_now=utcnow()
    )
    count, last, applied = (await session.execute(stmt)).one()
    return Seeded(int(count), last, success=int(applied), fused=True)


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
