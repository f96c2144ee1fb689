"""seed(batch_id): turn a filter into details page by page, then start execution.

A page is at most ``jobs_per_seed × chunk_size`` items — the first one chunk, so the
first items are applied and shown at once; the rest no more than the lane's pace fits in
``seed_page_seconds``, so a page commits (and progress moves) several times a second —,
seeded in two short transactions. The **claim** moves ``seed_cursor`` past the page
under the batch-row lock and records the page as a ``SeedClaim`` (after_id, until_id] —
a range found on the filter's join-free superset (``Target.claim_after``), so it holds
at most a page of items. The **page** takes one unclaimed-and-unlocked claim (``FOR
UPDATE SKIP LOCKED``), inserts its details (applying the operation on the way where it
may: ``details.create_details_from``), deletes the claim and adds its counts to the
batch — all in one transaction, so a page is seeded exactly once: a lane that dies
leaves its claim to the next seed job, never a half page. Holding the batch-row lock
for those counts, the page also claims the lane's next page, which the lane (or its
next invocation) seeds first: only a batch's first page, and a lane that finds no free
claim, need a claim transaction.

So several seed jobs — ``BATCH_SEED_LANES`` on PostgreSQL, each on its own connection
— seed one batch side by side; the first page, once in, enqueues the other lanes.
Seeding is done when no claim is left and nothing matches after the cursor; the
transaction that sees it (under the batch-row lock, so two lanes finishing together
cannot both miss it) marks it and wakes the executors — or, with nothing left pending
(every item applied as it was seeded), completes the batch itself. One invocation seeds
page after page for up to ``SEED_SLICE_S``, then re-enqueues itself; memory stays flat
and no transaction grows with the batch.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import details, monitor, notify, seed_exclusion, state
from app.db.base import utcnow
from app.db.unit_of_work import request_wakeup
from app.domain import RUNNABLE, STARTING, SUSPENDABLE, BatchStatus, DetailStatus, Wakeup
from app.models import Batch, BatchDetail, SeedClaim, User
from app.operations import BatchRun, Operation, get_operation, targets
from app.runtime.context import JobContext
from app.webhooks.events import WebhookEvent
from app.workflow.logs import write_action_log

log = logging.getLogger("batchd.seeding")

MAX_PAGE = 20_000


SEED_RETRY_DELAY_S = 1.0


SEED_SLICE_S = 1.0
"""One invocation seeds page after page (each its own short transactions) for up to
this long, then hands the rest back to the queue: no queue hop between pages, and no
seed job holds a worker slot for long."""


@dataclass(frozen=True)
class SeededPage:
    """What one ``seed_page`` did: the batch's priority, and whether seeding is over."""

    priority: str
    done: bool
    stop: bool = False
    """Seeding ended for good (the batch was refused): no further page."""
    recount: bool = False
    """This was the first page of a filter whose ``total`` is the planner's estimate:
    count it now (``recount``)."""
    ahead: bool = False
    """The page's transaction also claimed the next page: the lane may seed it without
    a claim transaction of its own."""


async def seed(ctx: JobContext, batch_id: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEED_SLICE_S
    priority = "normal"  # until the first page says
    # A claim left by an earlier invocation (claimed ahead, sized by its pace) is
    # seeded before any new one is claimed.
    ahead = True
    while not ctx.stopping.is_set():
        try:
            page = await seed_page(ctx, batch_id, claimed=ahead)
            if page is not None and page.recount:
                await recount(ctx, batch_id)
        except DBAPIError:
            # The database blinked: come back soon rather than after BATCH_START_TIMEOUT.
            retry = Wakeup("seed", batch_id, priority, defer=SEED_RETRY_DELAY_S)
            await ctx.queue.enqueue(retry)
            raise
        if page is not None:
            priority, ahead = page.priority, page.ahead
        if page is None or page.done or page.stop:
            return
        if loop.time() > deadline:
            await ctx.queue.enqueue(Wakeup("seed", batch_id, page.priority))
            return


async def seed_page(ctx: JobContext, batch_id: int, *, claimed: bool = False) -> SeededPage | None:
    """Claim the next page, then seed one claimed page (or start an id-list batch, whose
    details exist already). Returns None when this lane has nothing to do (batch gone,
    final or scheduled; every page claimed and the claims left are being seeded by other
    lanes). After the first page and after the last, wakes the batch's executors and
    monitor (``state.execution_wakeups``), sent once the page is committed.

    ``claimed``: a claim may be free — the lane's last page claimed one ahead
    (``SeededPage.ahead``), or an earlier invocation did —, so go straight to seeding it,
    and claim as usual only if none is free (another lane took it)."""
    if claimed:
        page = await _seed_claimed(ctx, batch_id, may_finish=False)
        if page is not None:
            return page
    claim = await _claim(ctx, batch_id)
    if claim is None:
        return await _seed_claimed(ctx, batch_id)
    return claim if isinstance(claim, SeededPage) else None


class Idle(enum.Enum):
    """``_claim``'s answer when the lane has nothing to do at all (the batch is gone,
    final, scheduled, suspended before it started, or another lane refused it)."""

    NOTHING = "nothing"


async def _claim(ctx: JobContext, batch_id: int) -> SeededPage | Idle | None:
    """The claim transaction: under the batch-row lock, start an id-list batch, resolve
    or count a filter before its first page (refusing it over ``BATCH_MAX_ITEMS``), and
    claim the page after ``seed_cursor`` if anything matches there. None: go on to seed
    a claimed page; a ``SeededPage``: what happened instead; ``Idle.NOTHING``: stop."""
    async with ctx.unit() as session:
        await seed_exclusion.share_seeding(session, batch_id)
        batch = await state.lock_batch(session, batch_id)
        if batch is None or state.is_final(batch.status):
            return Idle.NOTHING
        if batch.status == BatchStatus.SCHEDULED:
            return Idle.NOTHING  # not yet: the schedule cron creates it when its time comes
        if batch.seeding_done:
            return await _start_listed(ctx, session, batch)
        op = get_operation(batch.type)
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        cursor = batch.seed_cursor
        exact: int | None = None
        if not batch.targets_resolved:
            if batch.status not in STARTING:
                return Idle.NOTHING  # suspended before it started: resolved once activated
            exact = await _resolve_filter(session, batch, op, creator)
        elif cursor == 0 and _estimated(session, batch):
            # The create request took the planner's estimate (``count_for_create``): the
            # limit must hold before anything is applied. A cheap superset count proves
            # it almost always (``total`` is then counted after the first page:
            # ``recount``); otherwise count the filter itself now.
            flt = batch.filter or {}
            if not await op.target.at_most(session, creator, flt, ctx.settings.max_items):
                exact, _ = await op.target.count(session, creator, flt)
                batch.total = exact
        if exact is not None and exact > ctx.settings.max_items:
            refused = await _refuse_too_large(session, batch_id, exact, ctx.settings.max_items)
            if not refused:
                return Idle.NOTHING
            stop = SeededPage(batch.priority, done=True, stop=True)
        else:
            stop = None
            size = _page_size(ctx, batch, first=cursor == 0)
            await _claim_range(session, batch, op, creator, size)
    if stop is not None:
        await ctx.progress.publish(batch_id)
    return stop


def _page_size(
    ctx: JobContext, batch: Batch, *, first: bool, pace: tuple[int, float] | None = None
) -> int:
    """Items a page claims: the first page is one chunk, so its items are applied (and
    shown) at once; the pages after it are ``jobs_per_seed`` chunks — or, given the
    ``pace`` of the page that claims it (items, seconds), what that pace fits in
    ``seed_page_seconds``, one chunk at least: a page commits, and progress moves,
    that often however slow the database is."""
    full = batch.chunk_size * (1 if first else ctx.settings.jobs_per_seed)
    if pace is None or pace[0] <= 0 or pace[1] <= 0:
        return full
    timed = int(pace[0] * ctx.settings.seed_page_seconds / pace[1])
    return max(batch.chunk_size, min(full, timed))


async def _claim_range(
    session: AsyncSession, batch: Batch, op: Operation, creator: User, size: int
) -> bool:
    """Under the batch-row lock: record the next page after ``seed_cursor`` as a claim
    and move the cursor past it. False: nothing of the filter's superset is left there."""
    page = op.target.claim_after(
        creator,
        batch.filter or {},
        after=batch.seed_cursor,
        until=batch.seed_until,
        limit=min(size, MAX_PAGE),
    ).subquery()
    count, last = (await session.execute(select(func.count(), func.max(page.c.id)))).one()
    if not count:
        return False
    session.add(SeedClaim(batch_id=batch.id, after_id=batch.seed_cursor, until_id=last))
    batch.seed_cursor = last
    return True


async def _start_listed(ctx: JobContext, session: AsyncSession, batch: Batch) -> SeededPage:
    """An id-list batch (details made at creation) or a re-delivered seed job: move it to
    running and wake its executors (once)."""
    if batch.status in STARTING:
        state.move(batch, BatchStatus.RUNNING)
        _request_execution(ctx, session, batch.id, batch.priority)
    return SeededPage(batch.priority, done=True)


async def _seed_claimed(
    ctx: JobContext, batch_id: int, *, may_finish: bool = True
) -> SeededPage | None:
    """The page transaction: seed one claimed page that no other lane holds, or, with
    none left to take, finish seeding if nothing remains at all (``may_finish``: not
    when the lane only looks for a free claim before claiming — seeding may not have
    started)."""
    started = asyncio.get_running_loop().time()
    async with ctx.unit() as session:
        await seed_exclusion.share_seeding(session, batch_id)
        claim = await session.scalar(
            select(SeedClaim)
            .where(SeedClaim.batch_id == batch_id)
            .order_by(SeedClaim.after_id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if claim is None and not may_finish:
            return None
        batch = await session.get(Batch, batch_id, populate_existing=True)
        if batch is None or state.is_final(batch.status):
            await session.execute(delete(SeedClaim).where(SeedClaim.batch_id == batch_id))
            return None
        op = get_operation(batch.type)
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        if claim is None:
            locked = await state.lock_batch(session, batch_id)
            assert locked is not None
            if locked.seeding_done or not await _nothing_left(session, locked, op, creator):
                return None
            done, status, first, again = True, await _finish(session, batch_id), False, False
            ahead = False
        else:
            again = claim.after_id == 0 and _estimated(session, batch)
            done, status, first, ahead = await _seed_page(
                ctx, session, batch, op, creator, claim, started
            )
            if claim.after_id == 0 and not done:
                # The other lanes start once the first page is in: until then it has
                # the database to itself, and the first items show sooner.
                _request_lanes(ctx, session, batch)
        if status is not None and (first or done) and status in RUNNABLE:
            _request_execution(ctx, session, batch_id, batch.priority)
        priority = batch.priority
    await ctx.progress.publish(batch_id)
    return SeededPage(priority, done, recount=again and not done, ahead=ahead)


async def _seed_page(
    ctx: JobContext,
    session: AsyncSession,
    batch: Batch,
    op: Operation,
    creator: User,
    claim: SeedClaim,
    started: float,
) -> tuple[bool, str | None, bool, bool]:
    """Seed ``claim``'s items and add them to the batch (its row locked last, as
    everywhere); then, holding that lock, claim the next page (sized by this page's
    pace since ``started``: ``_page_size``), or finish seeding if nothing is left.
    Claiming here saves the lane a transaction per page (its lock, batch and creator
    reads, its commit). Returns (done, the batch's status, whether executors should
    start now — after a first page that left items pending for them —, whether the next
    page was claimed)."""
    page = op.target.page_after(
        creator, batch.filter or {}, after=claim.after_id, until=claim.until_id, limit=MAX_PAGE
    )
    seeded = await details.create_details_from(
        session, batch, creator, op, page, run=_fusion_run(batch)
    )
    await session.delete(claim)
    now = utcnow()
    # Only a batch nobody paused or cancelled meanwhile changes status here.
    bumped = await details.bump_counters(
        session,
        batch.id,
        seeded.outcomes,
        started_at=func.coalesce(Batch.started_at, now),
        updated_at=now,
        progress_seq=Batch.progress_seq + 1,
        status=case(
            (Batch.status.in_(state.statuses(STARTING)), BatchStatus.SEEDING),
            else_=Batch.status,
        ),
    )
    status = bumped.status
    if (
        batch.started_at is None
        and status in RUNNABLE
        and await _started_now(session, batch.id, now)
    ):
        notify.note(session, batch.id, WebhookEvent.BATCH_STARTED)
    # A fused page leaves only stragglers pending: executors start once seeding is
    # done instead of polling alongside it.
    first = claim.after_id == 0 and not seeded.fused
    locked = await session.get(Batch, batch.id, populate_existing=True)
    assert locked is not None
    pace = (seeded.count, asyncio.get_running_loop().time() - started)
    next_size = _page_size(ctx, locked, first=False, pace=pace)
    if await _claim_range(session, locked, op, creator, next_size):
        return False, status, first, True
    if await _nothing_left(session, locked, op, creator):
        return True, await _finish(session, batch.id), first, False
    return False, status, first, False


async def _nothing_left(session: AsyncSession, batch: Batch, op: Operation, creator: User) -> bool:
    """No claim left (other lanes' included) and nothing matching after the cursor. Run
    holding the batch-row lock, which every claim and every page takes before it commits:
    of two lanes finishing together, the later one sees the other's work."""
    await session.flush()
    if await session.scalar(select(exists().where(SeedClaim.batch_id == batch.id))):
        return False
    more = op.target.page_after(
        creator, batch.filter or {}, after=batch.seed_cursor, until=batch.seed_until, limit=1
    )
    return not await session.scalar(select(exists(more.subquery())))


async def _started_now(session: AsyncSession, batch_id: int, now: datetime) -> bool:
    """Whether the statement that just set ``started_at = coalesce(started_at, now)``
    is the one that started the batch (so ``batch.started`` is reported once)."""
    started = await session.scalar(select(Batch.started_at).where(Batch.id == batch_id))
    return started == now


async def _finish(session: AsyncSession, batch_id: int) -> str | None:
    """Seeding is over: mark it, start a batch that was starting, and set ``total`` to the
    details that exist (the create request counted or estimated the filter). A running
    batch with nothing pending or running is completed in the same transaction
    (``monitor.finish``) from the same count of its details: a batch applied while
    seeding needs no executor or monitor after its last page.

    Run holding the batch-row lock: an executor's chunk takes it before it commits, so
    a chunk in flight still shows its items pending here."""
    counts = await details.status_counts(session, batch_id)
    now = utcnow()
    starting = Batch.status.in_(state.statuses(STARTING))
    row = (
        await session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(
                seeding_done=True,
                status=case((starting, BatchStatus.RUNNING), else_=Batch.status),
                started_at=case(
                    (starting, func.coalesce(Batch.started_at, now)), else_=Batch.started_at
                ),
                total=sum(counts.values()),
                updated_at=now,
                progress_seq=Batch.progress_seq + 1,
            )
            .returning(Batch.status, Batch.started_at)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        return None
    if row.started_at == now:
        notify.note(session, batch_id, WebhookEvent.BATCH_STARTED)
    status: str = row.status
    unfinished = counts.get(DetailStatus.PENDING, 0) + counts.get(DetailStatus.RUNNING, 0)
    done = status == BatchStatus.RUNNING and not unfinished
    if done and await monitor.finish(session, batch_id, BatchStatus.COMPLETED, counts=counts):
        return BatchStatus.COMPLETED.value
    return status


def _estimated(session: AsyncSession, batch: Batch) -> bool:
    """Whether the filter batch's ``total`` may be the planner's estimate (the create
    request estimates from ``ESTIMATE_FROM`` rows on, on PostgreSQL only)."""
    return batch.total >= targets.ESTIMATE_FROM and session.get_bind().dialect.name == "postgresql"


async def recount(ctx: JobContext, batch_id: int) -> None:
    """Set an estimated ``total`` to the exact count, without holding up the pages: one
    statement (one snapshot) adds the details that exist to the matches not yet seeded —
    those after the lowest open claim, or after the cursor — while other lanes go on.
    ``_finish`` sets the final figure either way."""
    async with ctx.unit() as session:
        batch = await session.get(Batch, batch_id)
        if batch is None or batch.seeding_done or batch.filter is None:
            return
        op = get_operation(batch.type)
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        col = type(op.target).id_column  # via the class: an ORM attribute is a descriptor
        unseeded_from = func.coalesce(
            select(func.min(SeedClaim.after_id))
            .where(SeedClaim.batch_id == batch_id)
            .scalar_subquery(),
            select(Batch.seed_cursor).where(Batch.id == batch_id).scalar_subquery(),
        )
        unseeded = (
            op.target.matching(creator, batch.filter)
            .where(col > unseeded_from, col <= batch.seed_until)
            .subquery()
        )
        seeded = (
            select(func.count())
            .select_from(BatchDetail)
            .where(BatchDetail.batch_id == batch_id)
            .scalar_subquery()
        )
        exact = select(seeded + select(func.count()).select_from(unseeded).scalar_subquery())
        await session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.seeding_done.is_(False))
            .values(total=exact.scalar_subquery(), progress_seq=Batch.progress_seq + 1)
            .execution_options(synchronize_session=False)
        )
    await ctx.progress.publish(batch_id)


def _request_lanes(ctx: JobContext, session: AsyncSession, batch: Batch) -> None:
    """The first page wakes the other seed lanes (PostgreSQL; SQLite has one)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for _ in range(ctx.settings.seed_lanes - 1):
        request_wakeup(session, Wakeup("seed", batch.id, batch.priority))


async def _resolve_filter(session: AsyncSession, batch: Batch, op: Any, creator: User) -> int:
    """A scheduled filter batch resolves its filter when it starts, not when it was
    created: count what matches now, and seed up to today's highest id."""
    total, seed_until = await op.target.count(session, creator, batch.filter or {})
    await session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.targets_resolved.is_(False))
        .values(targets_resolved=True, total=total, seed_until=seed_until)
    )
    batch.seed_until = seed_until
    return int(total)


async def _refuse_too_large(
    session: AsyncSession, batch_id: int, total: int, max_items: int
) -> bool:
    """The filter matches more than ``BATCH_MAX_ITEMS`` (known only now: the create
    request estimated it, or the batch was scheduled): nothing has been seeded or
    applied; the batch ends ``aborted`` (``cancelled`` if it was created suspended),
    and the reason goes to the action log and the worker log."""
    batch = await state.lock_batch(session, batch_id)
    if batch is None or batch.seed_cursor != 0 or batch.status not in SUSPENDABLE:
        return False
    message = f"This batch would hold {total} items; the limit is {max_items}."
    if batch.status == BatchStatus.SUSPENDED:
        state.move(batch, BatchStatus.CANCELLED)
    else:
        if batch.status == BatchStatus.CREATED:
            state.move(batch, BatchStatus.SEEDING)
        state.move(batch, BatchStatus.ABORTED)
    batch.total = 0
    batch.seeding_done = True
    await write_action_log(
        session, None, "batch.refused", batch_id=batch_id, detail={"error": message}
    )
    log.warning("batch %s refused: %s", batch_id, message)
    return True


def _fusion_run(batch: Batch) -> BatchRun | None:
    """Whether the batch lets a seed page also apply the operation
    (``details.create_details_from`` with ``run``; whether the operation and dialect can
    is ``pipeline.strategy_for``'s): only one that is starting or running (never one
    paused or created suspended) and not rate-limited (the rate budget is the
    executor's)."""
    if (
        batch.status not in (BatchStatus.CREATED, BatchStatus.SEEDING, BatchStatus.RUNNING)
        or batch.max_items_per_second is not None
    ):
        return None
    return BatchRun(batch.id, batch.creator_id, batch.params or {})


def _request_execution(
    ctx: JobContext, session: AsyncSession, batch_id: int, priority: str
) -> None:
    for wakeup in state.execution_wakeups(ctx.settings, batch_id, priority):
        request_wakeup(session, wakeup)
