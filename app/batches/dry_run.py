"""``dry_run``: what a batch would do, with nothing written.

The targets are resolved exactly as at creation (an id list, or the filter paged in id
order) and each chunk goes through the operation's own ``apply`` with ``run.dry_run``:
the same rules and the same sentences, every item decided, no row written or locked —
set-based, a handful of queries per chunk. Every chunk also runs inside a savepoint that
is rolled back, so an operation that cannot predict (a custom type without
``supports_dry_run``) applies for real and leaves nothing behind either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

from sqlalchemy import BigInteger, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.batches.resolve import Resolved
from app.domain import DetailStatus, ErrorCode, Outcome
from app.models import User
from app.operations import BatchRun, WorkItem
from app.schemas.batch import DryRunOut, Problem

DRY_CHUNK = 500
"""Small enough that one chunk's Python work (form rules of 500 approvals: ~12 ms) never
holds the event loop for long; each chunk is a couple of indexed queries."""
MAX_PROBLEMS = 100


async def predict(session: AsyncSession, user: User, r: Resolved) -> DryRunOut:
    run = BatchRun(batch_id=0, creator_id=user.id, params=r.params, dry_run=True)
    counts: Counter[DetailStatus] = Counter()
    problems: list[Problem] = []
    async for ids in _chunks(session, user, r):
        items = [WorkItem(detail_id=i, item_id=item) for i, item in enumerate(ids)]
        for item, outcome in zip(items, await _decide(session, r, run, items), strict=True):
            counts[outcome.status] += 1
            if outcome.status != DetailStatus.SUCCESS and len(problems) < MAX_PROBLEMS:
                problems.append(
                    Problem(
                        item_id=item.item_id,
                        status=outcome.status,
                        error=outcome.error,
                        error_code=outcome.error_code,
                    )
                )
        # End the read transaction between chunks: nothing was written (the savepoint
        # was rolled back), and on SQLite every transaction holds the single write lock —
        # a long dry run must not stop the batches running meanwhile.
        await session.commit()
    await _add_titles(session, user, r, problems)
    return DryRunOut(
        type=r.op.type,
        total=sum(counts.values()),
        success=counts[DetailStatus.SUCCESS],
        failed=counts[DetailStatus.FAILED],
        ignored=counts[DetailStatus.IGNORED],
        problems=problems,
    )


async def _add_titles(
    session: AsyncSession, user: User, r: Resolved, problems: list[Problem]
) -> None:
    """Give the problems their titles, as ``user`` sees them (null for one they cannot
    see): one query for all ≤ ``MAX_PROBLEMS`` of them, the target's ``title_of``."""
    if not problems:
        return
    ids = union_all(
        *(select(literal(i, BigInteger).label("item_id")) for i in {p.item_id for p in problems})
    ).subquery("problem_ids")
    titles = dict(
        (await session.execute(select(ids.c.item_id, r.op.target.title_of(ids.c.item_id, user))))
        .tuples()
        .all()
    )
    for p in problems:
        p.title = titles.get(p.item_id)


async def _decide(
    session: AsyncSession, r: Resolved, run: BatchRun, items: list[WorkItem]
) -> list[Outcome]:
    savepoint = await session.begin_nested()
    try:
        return await r.op.apply(session, run, items)
    except Exception:
        # Only an operation that really applies (no dry-run support) can get here.
        return [
            Outcome.failed(
                ErrorCode.INTERNAL, f"Item {i.item_id} could not be checked; it may fail."
            )
            for i in items
        ]
    finally:
        await savepoint.rollback()


async def _chunks(session: AsyncSession, user: User, r: Resolved) -> AsyncIterator[list[int]]:
    if r.listed is not None:
        for listed in r.listed.pages(DRY_CHUNK):
            yield listed.item_ids
        return
    after = 0
    while True:
        page = r.op.target.page_after(
            user, r.filter or {}, after=after, until=r.seed_until, limit=DRY_CHUNK
        )
        ids = list(await session.scalars(page))
        if not ids:
            return
        yield ids
        after = ids[-1]
