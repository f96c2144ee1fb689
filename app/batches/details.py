"""Creating details (with their locks), recording their outcomes, and the batch counters.

The counters (``success``/``failed``/``ignored`` on ``batches``) have one writer,
``bump_counters`` — called by ``record_outcomes`` (every executed chunk, whatever its
strategy), by a seed page for what it decided or applied, and by creation and retry —
and one recount, ``status_counts`` + ``apply_counts``, which sets them from the rows
when a batch finishes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Row,
    Select,
    Table,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import notify, state
from app.batches.resolve import Listed, ListedSource
from app.db.base import utcnow
from app.db.bulk import id_in, insert_rows, update_rows
from app.domain import BatchRun, DetailStatus, ErrorCode, Outcome, WorkItem
from app.models import Batch, BatchDetail, User
from app.operations import Operation, pipeline_sql
from app.operations.pipeline import Stage, Strategy, strategy_for
from app.operations.registry import BulkSql
from app.webhooks.events import WebhookEvent

log = logging.getLogger("batchd.seeding")
CounterRow = Row[str, int, int, int, float | None]
"""A batch after ``bump_counters``: status, success, failed, ignored, failure threshold."""
_details = cast(Table, BatchDetail.__table__)
INSERT_PAGE = 5_000


@dataclass(frozen=True)
class Seeded:
    """Details written for one page of items: how many, the highest item id, and the
    outcomes decided at once, by status, for the caller to count (``bump_counters``):
    failed or ignored (never locked), and success for what a fused page applied."""

    count: int
    last_item_id: int | None
    outcomes: Counter[DetailStatus] = field(default_factory=Counter)
    fused: bool = False
    """The page was applied as it was seeded (only stragglers were left pending)."""


_APPLIED = Outcome.success()
"""The outcome ``create_details`` records for an item a fused seed page applied."""


async def create_details(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    listed: ListedSource,
    *,
    applied: Collection[int] = (),
) -> Seeded:
    """Insert one detail per listed item, a page at a time: pending, with its item locked
    for a locking operation — or already decided: a pre-failed row with its error, an
    item the creator may not lock (``ItemLock.acquire``) with the reason (failed or
    ignored), or an item of ``applied`` (a fused seed page did it) as ``success``. A
    pre-failed row's code is the listed source's (``Listed.error_codes``),
    ``validation`` when it gives none."""
    decided: Counter[DetailStatus] = Counter()
    count, last = 0, None
    for page in listed.pages(INSERT_PAGE):
        ids, errors, codes = page.item_ids, page.errors, page.error_codes
        pre: dict[int, Outcome] = {
            i: Outcome.failed((codes[i] if codes else None) or ErrorCode.VALIDATION, e)
            for i, e in enumerate(errors or [])
            if e
        }
        if applied:
            pre.update({i: _APPLIED for i, item_id in enumerate(ids) if item_id in applied})
        lockable = [ids[i] for i in range(len(ids)) if i not in pre]
        refused = (
            await op.lock.acquire(session, batch.id, creator, lockable)
            if op.lock and lockable
            else {}
        )
        now = utcnow()
        # Only the columns this page fills: a filter page has no rows, payloads or
        # errors, and every value sent is encoded (SQLite's bulk insert is one JSON
        # document).
        explained = any(o.error for o in (*pre.values(), *refused.values()))
        values = []
        for i, item_id in enumerate(ids):
            outcome = pre.get(i) or refused.get(item_id)
            value: dict[str, Any] = {
                "item_id": item_id,
                "status": outcome.status if outcome else DetailStatus.PENDING,
                "finished_at": now if outcome else None,
            }
            if page.rows:
                value["row"] = page.rows[i]
            if page.payloads:
                value["payload"] = page.payloads[i]
            if explained:
                value["error"] = outcome.error if outcome else None
                value["error_code"] = outcome.error_code if outcome else None
                value["retryable"] = outcome.retryable if outcome else None
            values.append(value)
            if outcome:
                decided[outcome.status] += 1
        await insert_rows(
            session, _details, values, constants={"batch_id": batch.id, "retry_count": 0}
        )
        count += len(ids)
        last = max(max(ids, default=0), last or 0) or None
    return Seeded(count, last, decided)


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

    With ``run`` (a batch that may run now) and ``Strategy.SEED_FUSED`` chosen by
    ``pipeline.strategy_for``, the operation is applied to the page as it is seeded:
    ``fuse_at_seed`` types through their ``bulk_sql`` (on SQLite through their
    ``apply``: ``_seed_applied``), ``task.approve`` through ``apply_at_seed`` on both
    backends. Each applied item's detail
    is written once, already ``success``; the rest is seeded as usual (pending, locked)
    for the executor, which decides it and says why. If the fused statement fails, the
    page is seeded plainly."""
    dialect = session.get_bind().dialect.name
    if run is not None and strategy_for(op, dialect, Stage.SEED) is Strategy.SEED_FUSED:
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
    if dialect != "postgresql":
        ids = list(await session.scalars(page))
        return await create_details(session, batch, creator, op, Listed(ids))
    sub = page.subquery()
    insert_page = insert(_details).from_select(
        ["batch_id", "item_id", "status", "retry_count"],
        select(
            literal(batch.id, BigInteger),
            sub.c.id,
            literal(DetailStatus.PENDING.value),
            literal(0, BigInteger),
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
    decided = await lock_pending(session, batch.id, creator, op, detail_of)
    return Seeded(len(detail_of), max(detail_of, default=None), decided)


async def lock_pending(
    session: AsyncSession,
    batch_id: int,
    creator: User,
    op: Operation,
    detail_of: dict[int, int],
) -> Counter[DetailStatus]:
    """Lock the items of pending details ({item id: detail id}) — just seeded, or just
    requeued by a retry; a detail whose item the creator may not lock (another batch
    holds it, it was decided meanwhile…) takes that outcome at once. Returns the counts
    of those outcomes by status, for the caller's ``bump_counters``."""
    assert op.lock is not None
    refused = await op.lock.acquire(session, batch_id, creator, list(detail_of))
    decided = ((detail_of[item_id], o) for item_id, o in refused.items())
    await update_rows(session, _details, _results(decided), constants={"finished_at": utcnow()})
    return Counter(o.status for o in refused.values())


async def _seed_applied(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    ids: list[int],
    run: BatchRun,
) -> Seeded:
    """SQLite's fused seed page of a lock-free type: ``Operation.apply`` — the
    executor's own portable path — on the page's items, in the page's transaction. That
    transaction holds SQLite's one writer from its first statement (``BEGIN
    IMMEDIATE``), so no other writer can change an item between its decision and its
    write, and nothing needs locking first."""
    if not ids:
        return Seeded(0, None, fused=True)
    outcomes = await op.apply(session, run, [WorkItem(0, item_id) for item_id in ids])
    applied = {i for i, o in zip(ids, outcomes, strict=True) if o.status == DetailStatus.SUCCESS}
    return await _insert_seeded(session, batch, creator, op, ids, applied)


async def _insert_seeded(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    ids: list[int],
    applied: set[int],
) -> Seeded:
    """SQLite: the details of a fused page. What was applied is recorded once,
    ``success``; the rest is seeded as usual (pending, locked) for the executor, which
    decides it again and says why — as on PostgreSQL."""
    if len(applied) < len(ids):
        seeded = await create_details(session, batch, creator, op, Listed(ids), applied=applied)
        return replace(seeded, fused=True)
    # The common case, everything applied: one value per row, the rest bound once.
    await insert_rows(
        session,
        _details,
        [{"item_id": item_id} for item_id in ids],
        constants={
            "batch_id": batch.id,
            "status": DetailStatus.SUCCESS,
            "retry_count": 0,
            "finished_at": utcnow(),
        },
    )
    return Seeded(len(ids), max(ids), Counter({DetailStatus.SUCCESS: len(ids)}), fused=True)


async def _seed_fused(
    session: AsyncSession,
    batch: Batch,
    creator: User,
    op: Operation,
    page: Select[Any],
    run: BatchRun,
) -> Seeded | None:
    """The fused seed page (``Strategy.SEED_FUSED``), or None when ``op``'s params give
    it no fast path. A locking type: ``_seed_locked_and_apply``; a lock-free one: on
    SQLite ``_seed_applied``, on PostgreSQL the type's statement."""
    if op.lock is not None:
        return await _seed_locked_and_apply(session, batch, creator, op, page, run)
    if session.get_bind().dialect.name != "postgresql":
        return await _seed_applied(
            session, batch, creator, op, list(await session.scalars(page)), run
        )
    bulk = await op.bulk_sql(session, run)
    return await _seed_and_apply(session, batch, page, bulk) if bulk is not None else None


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
    ids, applied = await op.apply_at_seed(session, run, page)
    if not ids:
        return Seeded(0, None, fused=True)
    if session.get_bind().dialect.name != "postgresql":
        return await _insert_seeded(session, batch, creator, op, ids, applied)
    statuses = [DetailStatus.SUCCESS if i in applied else DetailStatus.PENDING for i in ids]
    pending = (
        await session.execute(
            text(pipeline_sql.INSERT_DECIDED),
            {"batch": batch.id, "ids": ids, "statuses": statuses, "now": utcnow()},
        )
    ).all()
    detail_of = {item_id: detail_id for detail_id, item_id in pending}
    decided = await lock_pending(session, batch.id, creator, op, detail_of)
    decided[DetailStatus.SUCCESS] += len(applied)
    return Seeded(len(ids), max(ids), decided, fused=True)


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
    stmt = text(pipeline_sql.SEED_AND_APPLY.format(ctes=fused.ctes)).bindparams(
        **fused.params, seed_ids=ids, seed_batch=batch.id, seed_now=utcnow()
    )
    count, last, applied = (await session.execute(stmt)).one()
    return Seeded(int(count), last, Counter({DetailStatus.SUCCESS: int(applied)}), fused=True)


# --------------------------------------------------------------------- outcomes, counters


async def record_outcomes(
    session: AsyncSession,
    op: Operation,
    run: BatchRun,
    items: list[WorkItem],
    outcomes: list[Outcome],
    *,
    retry_counts: Mapping[int, int],
    max_retries: int,
    applied: int = 0,
) -> tuple[Counter[DetailStatus], CounterRow]:
    """Record a claimed chunk's outcomes, in the chunk's transaction, whatever strategy
    applied it: each detail's status, error, code and ``retryable``; the locks of
    ignored items, of failures no automatic retry will touch (not retryable, or
    exhausted) released at once (a success's own state change released its lock); the
    counters bumped once.
    ``applied``: successes a fused statement already wrote to their details.
    Returns the counts and the batch row after the bump (status, counters, threshold)."""
    now = utcnow()
    pairs = list(zip(items, outcomes, strict=True))
    # Successes share their values: one plain UPDATE; only the rest carry per-row text.
    succeeded = [i.detail_id for i, o in pairs if o.status == DetailStatus.SUCCESS]
    if succeeded:
        await session.execute(
            update(_details)
            .where(id_in(session, _details.c.id, succeeded))
            .values(
                status=DetailStatus.SUCCESS,
                error=None,
                error_code=None,
                retryable=None,
                finished_at=now,
            )
        )
    await update_rows(
        session,
        _details,
        _results((i.detail_id, o) for i, o in pairs if o.status != DetailStatus.SUCCESS),
        constants={"finished_at": now},
    )
    if op.lock is not None:
        done = [
            item.item_id
            for item, o in pairs
            if o.status == DetailStatus.IGNORED
            or (
                o.status == DetailStatus.FAILED
                and (
                    not o.retryable or state.is_exhausted(retry_counts[item.detail_id], max_retries)
                )
            )
        ]
        await op.lock.release(session, run.batch_id, done)
    counts = Counter(o.status for o in outcomes)
    counts[DetailStatus.SUCCESS] += applied
    row = await bump_counters(
        session,
        run.batch_id,
        counts,
        updated_at=now,
        progress_seq=Batch.progress_seq + 1,
    )
    return counts, row


def _results(decided: Iterable[tuple[int, Outcome]]) -> list[dict[str, Any]]:
    """``update_rows`` values of decided details, from (detail id, outcome): one shape
    for every writer of a result, so none forgets the code."""
    return [
        {
            "id": detail_id,
            "status": o.status,
            "error": o.error,
            "error_code": o.error_code,
            "retryable": o.retryable,
        }
        for detail_id, o in decided
    ]


async def bump_counters(
    session: AsyncSession, batch_id: int, counts: Mapping[DetailStatus, int], **values: Any
) -> CounterRow:
    """The one writer of the ``success``/``failed``/``ignored`` increments (a retry
    passes a negative ``failed``), with the caller's other ``values`` in the same
    statement. Returns the row's status, counters and failure threshold. The first
    failure of a run is noted for webhooks (``batch.failures``)."""
    bump = (
        update(Batch)
        .where(Batch.id == batch_id)
        .values(
            success=Batch.success + counts.get(DetailStatus.SUCCESS, 0),
            failed=Batch.failed + counts.get(DetailStatus.FAILED, 0),
            ignored=Batch.ignored + counts.get(DetailStatus.IGNORED, 0),
            **values,
        )
        .returning(
            Batch.status, Batch.success, Batch.failed, Batch.ignored, Batch.failure_threshold
        )
        # The caller's loaded ``Batch``, if any, is refreshed by the caller (or not read).
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(bump)).one()
    new_failures = counts.get(DetailStatus.FAILED, 0)
    if new_failures > 0 and row.failed == new_failures:
        # The count left 0: the first failure of this run (a retry of every failure
        # puts it back to 0, so a new run reports its first failure again).
        notify.note(session, batch_id, WebhookEvent.BATCH_FAILURES)
    return row


async def status_counts(session: AsyncSession, batch_id: int) -> dict[DetailStatus, int]:
    rows = await session.execute(
        select(BatchDetail.status, func.count())
        .where(BatchDetail.batch_id == batch_id)
        .group_by(BatchDetail.status)
    )
    return {DetailStatus(status): int(n) for status, n in rows}


def apply_counts(batch: Batch, counts: Mapping[DetailStatus, int]) -> None:
    """The recount: set the counters (and total) from the details themselves when a
    batch reaches a final state, so the final numbers are the rows, whatever happened."""
    batch.success = counts.get(DetailStatus.SUCCESS, 0)
    batch.failed = counts.get(DetailStatus.FAILED, 0)
    batch.ignored = counts.get(DetailStatus.IGNORED, 0)
    batch.cancelled = counts.get(DetailStatus.CANCELLED, 0)
    batch.total = sum(counts.values())
    # The error file is built from the failed details when it is downloaded (always the
    # current one, also after a retry finishes); a finished batch names it.
    batch.error_file = f"/api/v1/batches/{batch.id}/error-file" if batch.failed else None
