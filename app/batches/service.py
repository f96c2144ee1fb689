"""Batch service: create, query and lifecycle (suspend, activate, cancel, purge, retry).

Runs inside the caller's transaction (flush, never commit) and requests queue
wake-ups that the boundary sends after its commit.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches import details, notify, seed_exclusion, state
from app.batches.dry_run import predict
from app.batches.resolve import Resolved, resolve
from app.config import Settings
from app.db.base import utcnow
from app.db.bulk import id_in
from app.db.pages import total_of
from app.db.unit_of_work import request_wakeup
from app.domain import SUSPENDABLE, BatchStatus, DetailStatus
from app.errors import (
    MAX_LISTED_ERRORS,
    Conflict,
    IdempotencyKeyReused,
    NotFound,
    ValidationFailed,
)
from app.models import Batch, BatchDetail, SeedClaim, User
from app.operations import OPERATIONS, get_operation
from app.schemas.batch import BatchCreate, BatchOut, DetailOut, DryRunOut
from app.webhooks.events import WebhookEvent
from app.workflow.logs import write_action_log

# --------------------------------------------------------------------------- create


async def create_batch(
    session: AsyncSession,
    settings: Settings,
    user: User,
    req: BatchCreate,
    *,
    idempotency_key: str | None = None,
    resolved: Resolved | None = None,
) -> tuple[Batch, bool]:
    """Validate everything, then write the batch (and, for listed targets, its details
    and locks). Returns (batch, created); an existing batch for the same key is returned
    with created=False.

    ``resolved``: targets resolved by the caller (an Excel import: rows with payloads
    and pre-failed rows) instead of ``req.ids`` / ``req.filter``; ``req`` still gives
    the options (priority, chunk size, retries, start). With ``start_at`` the batch is
    ``scheduled``: a listed source is resolved (and locked) now, a filter when the batch
    starts (its ``total`` until then is today's count)."""
    key = idempotency_key_of(req, idempotency_key)
    fingerprint = request_fingerprint(req) if key else None
    if key:
        existing = await _by_idempotency_key(session, user.id, key, fingerprint)
        if existing is not None:
            return existing, False
    r = resolved or await resolve(session, settings, user, req)
    op = r.op
    scheduled = req.start_at is not None
    status = BatchStatus.SCHEDULED if scheduled else BatchStatus.CREATED
    cfg = settings.for_type(op.type)
    batch = Batch(
        type=op.type,
        status=status,
        priority=req.priority,
        creator_id=user.id,
        params=r.params,
        filter=r.filter,
        source=r.source,
        is_single=r.is_single,
        skipped_rows=r.skipped_rows,
        idempotency_key=key,
        request_hash=fingerprint,
        total=r.total,
        chunk_size=req.chunk_size or cfg.chunk_size,
        max_retries=req.max_retries if req.max_retries is not None else cfg.max_retries,
        failure_threshold=req.failure_threshold or cfg.failure_threshold,
        history_ttl=cfg.history_ttl,
        seed_until=r.seed_until,
        seeding_done=r.listed is not None,
        start_at=req.start_at,
        targets_resolved=not (scheduled and r.filter is not None),
        max_items_per_second=req.max_items_per_second,
    )
    try:
        async with session.begin_nested():
            session.add(batch)
            await session.flush()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race.
        existing = await _by_idempotency_key(session, user.id, key or "", fingerprint)
        if existing is None:
            raise
        return existing, False

    notify.note(session, batch.id, WebhookEvent.BATCH_CREATED)
    decided = 0
    if r.listed:
        seeded = await details.create_details(session, batch, user, op, r.listed)
        await details.bump_counters(session, batch.id, seeded.outcomes)
        await session.refresh(batch, ["success", "failed", "ignored"])
        decided = seeded.outcomes.total()
    if decided == r.total and not scheduled:
        # Empty, or every item decided at creation (missing, locked elsewhere): nothing
        # would ever run, so the batch completes at once, even if asked to start suspended.
        batch.started_at = utcnow()
        state.move(batch, BatchStatus.COMPLETED)
    elif req.start_suspended:
        state.move(batch, BatchStatus.SUSPENDED)
    _request_wakeups(session, settings, batch)
    await write_action_log(
        session,
        user.id,
        "batch.created",
        batch_id=batch.id,
        detail={
            "type": op.type,
            "source": r.source,
            "total": r.total,
            "skipped_rows": r.skipped_rows,
            "start_suspended": req.start_suspended,
            "start_at": req.start_at.isoformat() if req.start_at else None,
        },
    )
    await session.flush()
    return batch, True


def idempotency_key_of(req: BatchCreate, header: str | None) -> str | None:
    """The request's idempotency key, from the ``Idempotency-Key`` header or the body's
    ``idempotency_key``; two different keys are a 422 (which one counts is no guess)."""
    if header and req.idempotency_key not in (None, header):
        raise ValidationFailed(
            "The Idempotency-Key header and the body's idempotency_key differ: send one.",
            fields=[{"loc": ["body", "idempotency_key"], "msg": "differs from the header"}],
        )
    return header or req.idempotency_key


async def dry_run(
    session: AsyncSession, settings: Settings, user: User, req: BatchCreate
) -> DryRunOut:
    """Validate as ``create_batch`` does, then predict every item; nothing is written."""
    return await predict(session, user, await resolve(session, settings, user, req))


def request_fingerprint(req: BatchCreate) -> str:
    """sha256 of the create request in canonical JSON (without the key itself)."""
    body = req.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _by_idempotency_key(
    session: AsyncSession, user_id: int, key: str, fingerprint: str | None
) -> Batch | None:
    """The caller's batch made with ``key`` — only if it was made by the same request."""
    batch = await session.scalar(
        select(Batch).where(Batch.creator_id == user_id, Batch.idempotency_key == key)
    )
    if batch is not None and batch.request_hash not in (None, fingerprint):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for batch {batch.id} with a different request; "
            "use a new key for a new request.",
            fields=[{"loc": ["idempotency_key"], "msg": "already used for another request"}],
        )
    return batch


# --------------------------------------------------------------------------- query


async def get_batch(session: AsyncSession, user: User, batch_id: int) -> Batch:
    """A user sees their own batches; an admin sees all. Others get 404."""
    batch = await session.get(Batch, batch_id, populate_existing=True)
    if batch is None or (not user.is_admin and batch.creator_id != user.id):
        raise NotFound(f"Batch {batch_id} does not exist.")
    return batch


def to_out(batch: Batch, creator_name: str | None = None) -> BatchOut:
    return BatchOut.model_validate(batch).model_copy(update={"creator_name": creator_name})


async def batch_out(session: AsyncSession, batch: Batch, viewer: User) -> BatchOut:
    """``to_out`` with the creator's name: people know a batch's owner by name, not by
    id. The ``viewer``'s own batch needs no read (their row is the request's); another's
    one indexed read."""
    if viewer.id == batch.creator_id:
        return to_out(batch, viewer.name)
    name = await session.scalar(select(User.name).where(User.id == batch.creator_id))
    return to_out(batch, name)


async def list_batches(
    session: AsyncSession,
    user: User,
    *,
    offset: int,
    limit: int,
    type: str | None = None,
    status: str | None = None,
    creator_id: int | None = None,
) -> tuple[list[BatchOut], int]:
    clauses = []
    if not user.is_admin:
        clauses.append(Batch.creator_id == user.id)
    if creator_id is not None:
        clauses.append(Batch.creator_id == creator_id)
    if type:
        clauses.append(Batch.type == type)
    if status:
        clauses.append(Batch.status == status)
    stmt = select(Batch).where(*clauses)
    rows = await session.execute(
        stmt.add_columns(User.name)
        .outerjoin(User, User.id == Batch.creator_id)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [to_out(b, name) for b, name in rows], await total_of(session, stmt)


async def list_details(
    session: AsyncSession,
    batch: Batch,
    *,
    offset: int,
    limit: int,
    status: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[DetailOut], int]:
    """One page of a batch's details in detail order (``status`` and ``where`` narrow
    them; the failure groups pass theirs), with the total. Each carries its ``title`` as
    the batch's *creator* sees it — null for an item they cannot see, whoever reads
    (an admin sees no more than the item errors say) — by one correlated subquery in the
    page's statement, the one the results export uses (``Target.title_of``)."""
    clauses = [BatchDetail.batch_id == batch.id, *where]
    if status:
        clauses.append(BatchDetail.status == status)
    stmt = select(BatchDetail).where(*clauses)
    creator = await session.get(User, batch.creator_id)
    op = OPERATIONS.get(batch.type)  # a custom type unregistered since: no titles
    title = (
        op.target.title_of(BatchDetail.item_id, creator)
        if op is not None and creator is not None
        else null()
    )
    rows = await session.execute(
        stmt.add_columns(title.label("title")).order_by(BatchDetail.id).offset(offset).limit(limit)
    )
    page = [DetailOut.model_validate(d).model_copy(update={"title": t}) for d, t in rows]
    return page, await total_of(session, stmt)


# --------------------------------------------------------------------------- lifecycle
# Every status change goes through ``state.move`` on a row-locked batch
# (``state.lock_batch``, taken last: detail rows and items first, like the executor).


def _request_wakeups(session: AsyncSession, settings: Settings, batch: Batch) -> None:
    for wakeup in state.wakeups_for(settings, batch):
        request_wakeup(session, wakeup)


async def _locked(session: AsyncSession, user: User, batch_id: int) -> Batch:
    await get_batch(session, user, batch_id)  # visibility first: 404 for others' batches
    batch = await state.lock_batch(session, batch_id)
    if batch is None:
        raise NotFound(f"Batch {batch_id} does not exist.")
    return batch


async def suspend(session: AsyncSession, user: User, batch_id: int) -> Batch:
    batch = await _locked(session, user, batch_id)
    if batch.status not in SUSPENDABLE:
        raise Conflict(
            f"Batch {batch_id} is {batch.status}; only an active batch can be suspended."
        )
    state.move(batch, BatchStatus.SUSPENDED)
    await write_action_log(session, user.id, "batch.suspended", batch_id=batch.id)
    await session.flush()
    return batch


async def activate(session: AsyncSession, settings: Settings, user: User, batch_id: int) -> Batch:
    batch = await _locked(session, user, batch_id)
    if batch.status != BatchStatus.SUSPENDED:
        raise Conflict(
            f"Batch {batch_id} is {batch.status}; only a suspended batch can be activated."
        )
    state.move(batch, resume_status(batch))
    _request_wakeups(session, settings, batch)
    await write_action_log(session, user.id, "batch.activated", batch_id=batch.id)
    await session.flush()
    return batch


def resume_status(batch: Batch) -> BatchStatus:
    """Where an activated batch goes: back to ``scheduled`` if it never started and its
    time has not come; ``created`` if its filter is still to be resolved; else on with
    seeding (executors start alongside the seeder) or running."""
    if batch.started_at is None and batch.start_at is not None and batch.start_at > utcnow():
        return BatchStatus.SCHEDULED
    if not batch.targets_resolved:
        return BatchStatus.CREATED
    return BatchStatus.RUNNING if batch.seeding_done else BatchStatus.SEEDING


async def cancel(
    session: AsyncSession, user: User, batch_id: int, *, cascade: bool
) -> Batch | None:
    """DELETE: cancel an active batch (pending items → cancelled), or give up the failed
    items of a finished one; either way release every lock. ``cascade`` also purges the
    batch and its details (returns None).

    Both item updates always run, whatever status was read: the batch may finish, or be
    auto-retried, between that read and the row lock. Pending items are cancelled and
    failed ones exhausted (no retry takes them again; a cancelled batch cannot be retried
    anyway), and the row locks these updates take keep a concurrent retry from
    requeueing anything behind our back."""
    await seed_exclusion.exclude_seeding(session, batch_id)  # no seed page commits meanwhile
    batch = await get_batch(session, user, batch_id)
    op = get_operation(batch.type)
    await session.execute(
        update(BatchDetail)
        .where(BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.PENDING)
        .values(status=DetailStatus.CANCELLED, finished_at=utcnow(), error="Cancelled by the user.")
    )
    await session.execute(
        update(BatchDetail)
        .where(BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED)
        .values(retry_count=batch.max_retries)
    )
    if op.lock is not None:
        await op.lock.release_all(session, batch.id)
    # Pages claimed but not seeded are never seeded now.
    await session.execute(delete(SeedClaim).where(SeedClaim.batch_id == batch.id))
    await write_action_log(
        session, user.id, "batch.purged" if cascade else "batch.cancelled", batch_id=batch.id
    )
    if cascade:
        await session.execute(delete(BatchDetail).where(BatchDetail.batch_id == batch.id))
        await session.delete(batch)
        await session.flush()
        return None
    locked = await state.lock_batch(session, batch.id)
    assert locked is not None
    details.apply_counts(locked, await details.status_counts(session, locked.id))
    if state.may_move(locked.status, BatchStatus.CANCELLED):
        state.move(locked, BatchStatus.CANCELLED)
    else:
        state.touch(locked)
    await session.flush()
    return locked


@dataclass
class RetryResult:
    batch: Batch
    requeued: int
    exhausted: int


async def retry(
    session: AsyncSession,
    settings: Settings,
    user: User | None,
    batch_id: int,
    item_ids: list[int] | None = None,
    *,
    guard_finished: bool = False,
) -> RetryResult:
    """Failed, non-exhausted details go back to pending with retry_count + 1 and the batch
    runs again; exhausted ones (``state.is_exhausted``) release their locks. A locking
    type re-locks the requeued items: one another batch holds now (or decided
    meanwhile) takes that outcome at once (``locked``, ignored…) instead of running; it
    still counts as requeued (retried: ``retry_count`` + 1), and the batch runs again
    only if something is left to run.
    ``user`` retries any failure (they fixed its cause; ``item_ids`` that never failed
    are a 409); ``user=None`` is the auto-retry cron acting on the batch's behalf, which
    requeues only retryable failures (``awaiting_auto_retry``). With
    ``guard_finished`` nothing happens unless the batch is still finished (so two cron
    passes racing on one batch retry it once)."""
    batch = (
        await get_batch(session, user, batch_id)
        if user is not None
        else await session.get(Batch, batch_id, populate_existing=True)
    )
    if batch is None:
        raise NotFound(f"Batch {batch_id} does not exist.")
    if batch.status == BatchStatus.CANCELLED:
        raise Conflict(f"Batch {batch_id} was cancelled; it cannot be retried.")
    if guard_finished and not state.is_final(batch.status):
        return RetryResult(batch, 0, 0)
    op = get_operation(batch.type)
    clauses = [BatchDetail.batch_id == batch.id, BatchDetail.status == DetailStatus.FAILED]
    if user is None:
        clauses.append(BatchDetail.retryable.is_(True))
    if item_ids is not None:
        await _check_retry_items(session, batch.id, item_ids)
        clauses.append(id_in(session, BatchDetail.item_id, item_ids))
    failed = (
        await session.execute(select(BatchDetail.item_id, BatchDetail.retry_count).where(*clauses))
    ).all()
    exhausted = [i for i, n in failed if state.is_exhausted(n, batch.max_retries)]
    if op.lock is not None:
        await op.lock.release(session, batch.id, exhausted)
    # The conditional UPDATE is the source of truth for what was requeued.
    requeued = {
        item_id: detail_id
        for detail_id, item_id in await session.execute(
            update(BatchDetail)
            .where(*clauses, state.retryable(BatchDetail.retry_count, batch.max_retries))
            .values(
                status=DetailStatus.PENDING,
                retry_count=BatchDetail.retry_count + 1,
                error=None,
                error_code=None,
                retryable=None,
                finished_at=None,
            )
            .returning(BatchDetail.id, BatchDetail.item_id)
        )
    }
    refused: Counter[DetailStatus] = Counter()
    if requeued and op.lock is not None:
        creator = await session.get(User, batch.creator_id)
        assert creator is not None
        refused = await details.lock_pending(session, batch.id, creator, op, requeued)
    running = len(requeued) - refused.total()
    counts = Counter(refused)
    counts[DetailStatus.FAILED] -= len(requeued)
    locked = await state.lock_batch(session, batch.id)
    assert locked is not None
    if requeued:
        await details.bump_counters(session, locked.id, counts)
        await session.refresh(locked, ["success", "failed", "ignored"])
    if running and state.is_final(locked.status):
        state.move(locked, BatchStatus.RUNNING)
    else:
        state.touch(locked)
    if running:
        _request_wakeups(session, settings, locked)
    await write_action_log(
        session,
        user.id if user else None,
        "batch.retried" if user else "batch.auto_retried",
        batch_id=locked.id,
        detail={"requeued": len(requeued), "exhausted": len(exhausted)},
    )
    await session.flush()
    return RetryResult(locked, len(requeued), len(exhausted))


_NOT_FAILED = {
    DetailStatus.SUCCESS: "succeeded",
    DetailStatus.IGNORED: "was ignored",
    DetailStatus.PENDING: "is pending",
    DetailStatus.RUNNING: "is running",
    DetailStatus.CANCELLED: "was cancelled",
}


async def _check_retry_items(session: AsyncSession, batch_id: int, item_ids: list[int]) -> None:
    """``item_ids`` of a retry must all be in the batch (404) and have failed (409, with
    what became of each instead): a silent "requeued 0" hides a wrong id list."""
    statuses: dict[int, set[str]] = {}
    for item_id, status in await session.execute(
        select(BatchDetail.item_id, BatchDetail.status).where(
            BatchDetail.batch_id == batch_id, id_in(session, BatchDetail.item_id, item_ids)
        )
    ):
        statuses.setdefault(item_id, set()).add(status)
    unknown = sorted(set(item_ids) - statuses.keys())
    if unknown:
        raise NotFound(f"Items {', '.join(map(str, unknown[:20]))} are not in batch {batch_id}.")
    never = sorted(i for i, seen in statuses.items() if DetailStatus.FAILED not in seen)
    if never:
        shown = never[:MAX_LISTED_ERRORS]
        why = ", ".join(f"{i} {_NOT_FAILED[DetailStatus(min(statuses[i]))]}" for i in shown)
        more = f", and {len(never) - len(shown)} more" if len(never) > len(shown) else ""
        raise Conflict(
            f"Items {', '.join(map(str, shown))} did not fail: {why}{more}. "
            "Only failed items can be retried."
        )
