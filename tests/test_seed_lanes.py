"""Seed lanes (issue 13): a filter batch's pages are claimed (``SeedClaim``) and seeded
in separate transactions, by several seed jobs at once on PostgreSQL. Every item gets
exactly one detail and is applied once, whatever order the pages are seeded in, and a
page claimed by a lane that died is seeded by the next seed job."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import seeding
from app.config import Settings
from app.models import Batch, BatchDetail, ProcessInstance, ProcessLog, SeedClaim, Task, User
from app.operations import targets
from app.runtime.context import JobContext
from tests.batch_helpers import create, expense_setup, recording_context, wait_for
from tests.conftest import ON_POSTGRES, Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

T = TypeVar("T")

APPROVE_ALL: dict[str, Any] = {
    "type": "task.approve",
    "filter": {"definition_key": "expense", "node_id": "manager"},
    "params": {"decision": "approve", "form_data": {"category": "travel"}},
}


async def _rows(sm: async_sessionmaker[AsyncSession], batch_id: int) -> dict[str, Any]:
    """What the database holds for the batch: details (and distinct items), claims left,
    process logs, and the batch row's seeding state."""
    async with sm() as s:
        detail_rows = await s.scalar(select(func.count()).where(BatchDetail.batch_id == batch_id))
        items = await s.scalar(
            select(func.count(func.distinct(BatchDetail.item_id))).where(
                BatchDetail.batch_id == batch_id
            )
        )
        claims = await s.scalar(select(func.count()).where(SeedClaim.batch_id == batch_id))
        logs = await s.scalar(select(func.count()).where(ProcessLog.batch_id == batch_id))
        batch = await s.get(Batch, batch_id)
        assert batch is not None
        return {
            "details": detail_rows,
            "items": items,
            "claims": claims,
            "logs": logs,
            "seeding_done": batch.seeding_done,
            "status": batch.status,
            "total": batch.total,
        }


async def _at_finance(sm: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """(instances moved to finance, pending finance tasks): each exactly once per item."""
    async with sm() as s:
        moved = await s.scalar(
            select(func.count()).where(ProcessInstance.current_node_id == "finance")
        )
        nxt = await s.scalar(
            select(func.count()).where(Task.node_id == "finance", Task.status == "pending")
        )
    return int(moved or 0), int(nxt or 0)


@pytest.mark.parametrize(
    "settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 7, "seed_lanes": 4}]
)
async def test_pages_seeded_side_by_side_are_each_seeded_once(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """150 tasks in pages of 7, four lanes: every task approved once, one detail and one
    log each, nothing claimed left over."""
    await expense_setup(sessionmaker, admin, alice, bob, 150)
    batch = await create(alice, APPROVE_ALL)
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["total"], done["success"]) == ("completed", 150, 150), done
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"], rows["logs"]) == (150, 150, 0, 150)
    assert await _at_finance(sessionmaker) == (150, 150)


async def _seed_to_the_end(ctx: JobContext, batch_id: int) -> int:
    """Run seed pages by hand until seeding is done; returns how many it took."""
    for turn in range(1, 50):
        page = await seeding.seed_page(ctx, batch_id)
        assert page is not None
        if page.done:
            return turn
    raise AssertionError("seeding never ended")


@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 2, "chunk_size": 3}])
async def test_claims_are_ranges_of_the_superset_and_pages_seed_only_matches(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """A page's range is claimed on the join-free superset (Alice's pending manager
    tasks), which here interleaves her 12 expense tasks with 12 travel ones: ranges of at
    most a page of the superset (3 for the first page, then 6), each seeding only the
    expense tasks in it — every one once, no travel task touched."""
    expense = await create_definition(admin, expense_definition(alice.id, bob.id))
    travel = await create_definition(admin, expense_definition(alice.id, bob.id, key="travel"))
    for _ in range(12):
        for d in (expense, travel):
            await bulk_tasks(
                sessionmaker,
                definition_id=d["id"],
                definition_key=d["key"],
                node_id="manager",
                assignee_id=alice.id,
                initiator_id=admin.id,
                n=1,
            )
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    seeded: list[int] = []
    for _ in range(50):
        page = await seeding.seed_page(ctx, batch["id"])
        assert page is not None
        seeded.append((await _rows(sessionmaker, batch["id"]))["details"])
        if page.done:
            break
    # Claims and pages alternate; each page adds the expense tasks of its range: every
    # other superset task is one (3 → 1 or 2, 6 → 3).
    steps = [b - a for a, b in zip([0, *seeded], seeded, strict=False)]
    assert max(steps) <= 3 and sum(steps) == 12, steps
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"], rows["logs"]) == (12, 12, 0, 12)
    async with sessionmaker() as s:
        travel_pending = await s.scalar(
            select(func.count()).where(
                Task.assignee_id == alice.id, Task.status == "pending", Task.node_id == "manager"
            )
        )
    assert travel_pending == 12


@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 5}])
async def test_pages_claimed_by_a_lane_that_died_are_seeded_by_the_next(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """A lane claimed two pages and died before seeding them: the claims stay, the
    cursor is past them, and the next seed job seeds them (and the rest) exactly once."""
    await expense_setup(sessionmaker, admin, alice, bob, 23)
    batch = await create(alice, APPROVE_ALL)
    ctx, queue = recording_context(app)

    assert await seeding._claim(ctx, batch["id"]) is None  # claims the first page
    assert await seeding._claim(ctx, batch["id"]) is None  # and the second; then it dies
    assert queue.sent == []  # the other lane starts once the first page is in
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["claims"], rows["seeding_done"]) == (0, 2, False)

    turns = await _seed_to_the_end(ctx, batch["id"])
    assert turns == 5  # 23 items in pages of 5, the two orphans first
    # On PostgreSQL the first page woke the other lane (BATCH_SEED_LANES=2).
    assert [w.job for w in queue.sent].count("seed") == (1 if ON_POSTGRES else 0)
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"]) == (23, 23, 0), rows
    # Applied while seeding, nothing left pending: the last page completed the batch
    # itself, and no executor was woken for nothing.
    assert (rows["seeding_done"], rows["status"], rows["total"]) == (True, "completed", 23)
    assert "execute" not in [w.job for w in queue.sent]
    if ON_POSTGRES:  # once each
        assert rows["logs"] == 23
        assert await _at_finance(sessionmaker) == (23, 23)


@pytest.mark.external_workers
@pytest.mark.skipif(not ON_POSTGRES, reason="SQLite's writers take turns: one lane at a time")
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 5}])
async def test_seeding_ends_only_when_the_last_page_is_seeded(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Two lanes: while one holds the first page, the other seeds the second — which is
    the end of the filter, yet seeding is not over until the first page is in."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    assert await seeding._claim(ctx, batch["id"]) is None
    assert await seeding._claim(ctx, batch["id"]) is None
    async with sessionmaker() as lane:  # another lane is seeding the first page
        first = await lane.scalar(
            select(SeedClaim)
            .where(SeedClaim.batch_id == batch["id"], SeedClaim.after_id == 0)
            .with_for_update()
        )
        assert first is not None
        page = await seeding.seed_page(ctx, batch["id"])
        assert page is not None and not page.done
        rows = await _rows(sessionmaker, batch["id"])
        assert (rows["details"], rows["claims"], rows["seeding_done"]) == (5, 1, False)
        # Nothing left to claim or take: this lane stops, the other one will finish.
        assert await seeding.seed_page(ctx, batch["id"]) is None
        await lane.rollback()  # that lane died
    page = await seeding.seed_page(ctx, batch["id"])
    assert page is not None and page.done
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"]) == (10, 10, 0)
    assert (rows["seeding_done"], rows["total"], rows["logs"]) == (True, 10, 10)


@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 4, "chunk_size": 5}])
async def test_the_first_page_is_one_chunk_and_the_rest_are_full(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """A big batch shows its first items applied at once: the first page claims one chunk
    (5 items), the pages after it ``jobs_per_seed`` chunks (20)."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    assert await seeding._claim(ctx, batch["id"]) is None
    assert await seeding._claim(ctx, batch["id"]) is None
    async with sessionmaker() as s:
        claims = (
            await s.execute(
                select(SeedClaim.after_id, SeedClaim.until_id)
                .where(SeedClaim.batch_id == batch["id"])
                .order_by(SeedClaim.after_id)
            )
        ).all()
    t = setup.task_ids
    assert [tuple(c) for c in claims] == [(0, t[4]), (t[4], t[24])]
    assert await _seed_to_the_end(ctx, batch["id"]) == 3  # the two claims, then the last 5
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"]) == (30, 30, 0), rows


async def _total(sm: async_sessionmaker[AsyncSession], batch_id: int) -> int:
    async with sm() as s:
        return int(await s.scalar(select(Batch.total).where(Batch.id == batch_id)) or 0)


@pytest.fixture
def estimated_12(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every filter is "big" and the planner says 12 rows match, whatever the truth."""

    async def estimated(session: AsyncSession, stmt: Any) -> int:
        return 12

    monkeypatch.setattr(targets, "ESTIMATE_FROM", 1)
    monkeypatch.setattr(targets, "estimated_rows", estimated)


def estimated_under_a_limit_of_12(test: T) -> T:
    """PostgreSQL, seeded by hand in pages of 5, ``BATCH_MAX_ITEMS=12``, every filter
    estimated at 12 rows (``estimated_12``)."""
    marks = (
        pytest.mark.external_workers,
        pytest.mark.skipif(not ON_POSTGRES, reason="the planner's estimate is PostgreSQL's"),
        pytest.mark.parametrize(
            "settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 5, "max_items": 12}]
        ),
        pytest.mark.usefixtures("estimated_12"),
    )
    marked: Any = test
    for mark in marks:
        marked = mark(marked)
    return cast(T, marked)


@estimated_under_a_limit_of_12
async def test_an_estimate_proven_under_the_limit_is_counted_after_the_first_page(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Alice's 10 pending manager tasks — counted without joining their processes — prove
    the filter under the limit of 12, so the first page is applied before the filter is
    counted (the total still the estimate); the recount that page asks for makes the
    total exact while the rest is still unseeded."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    batch = await create(alice, APPROVE_ALL)
    assert batch["total"] == 12
    ctx, _queue = recording_context(app)
    first = await seeding.seed_page(ctx, batch["id"])
    assert first is not None and first.recount and not first.done
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["logs"], rows["total"]) == (5, 5, 12)
    await seeding.recount(ctx, batch["id"])
    assert await _total(sessionmaker, batch["id"]) == 10
    await _seed_to_the_end(ctx, batch["id"])
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["logs"], rows["total"]) == (10, 10, 10, 10)


@estimated_under_a_limit_of_12
async def test_a_superset_over_the_limit_has_the_filter_counted_before_the_first_page(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Alice also holds 5 manager tasks of another process: her 15 pending manager tasks
    no longer prove the expense filter under 12, so it is counted before anything is
    applied — 10, under the limit: the batch runs, its total exact from the first page."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    other = await create_definition(admin, expense_definition(alice.id, bob.id, key="travel"))
    await bulk_tasks(
        sessionmaker,
        definition_id=other["id"],
        definition_key="travel",
        node_id="manager",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=5,
    )
    batch = await create(alice, APPROVE_ALL)
    assert batch["total"] == 12
    ctx, _queue = recording_context(app)
    assert await seeding.seed_page(ctx, batch["id"]) is not None
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["total"], rows["status"]) == (5, 10, "seeding")
    await _seed_to_the_end(ctx, batch["id"])
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["logs"], rows["total"]) == (10, 10, 10)
    async with sessionmaker() as s:
        untouched = await s.scalar(
            select(func.count()).where(Task.assignee_id == alice.id, Task.status == "pending")
        )
    assert untouched == 5  # the travel tasks are not the filter's


async def test_the_limit_is_proven_by_the_id_span_or_by_a_count(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Alice's ten pending manager tasks lie among Bob's (ids 1–5 and 11–15 of the
    fifteen): their span proves at most 15, their count at most 10, and nothing proves
    at most 9."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    common = {
        "definition_id": setup.definition["id"],
        "definition_key": "expense",
        "node_id": "manager",
        "initiator_id": admin.id,
        "n": 5,
    }
    await bulk_tasks(sessionmaker, assignee_id=bob.id, **common)
    await bulk_tasks(sessionmaker, assignee_id=alice.id, **common)
    flt = {"definition_key": "expense", "node_id": "manager"}
    async with sessionmaker() as s:
        user = await s.get(User, alice.id)
        assert user is not None
        proven = [await targets.TASKS.at_most(s, user, flt, limit) for limit in (15, 10, 9)]
    assert proven == [True, True, False]


async def _no_claim_transaction(_ctx: JobContext, _batch_id: int) -> None:
    raise AssertionError("a claim transaction while a claim was free")


@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 4}])
async def test_a_page_claims_the_next_one_in_its_own_transaction(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10 tasks in pages of 4: each page's transaction leaves the next page claimed, so
    the lane seeds it without a claim transaction of its own; the last page leaves no
    claim and ends seeding."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    first = await seeding.seed_page(ctx, batch["id"])
    assert first is not None and first.ahead and not first.done
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["claims"], rows["seeding_done"]) == (4, 1, False)

    monkeypatch.setattr(seeding, "_claim", _no_claim_transaction)
    second = await seeding.seed_page(ctx, batch["id"], claimed=True)
    assert second is not None and second.ahead and not second.done
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["claims"]) == (8, 1)
    last = await seeding.seed_page(ctx, batch["id"], claimed=True)
    assert last is not None and last.done and not last.ahead
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"], rows["logs"]) == (10, 10, 0, 10)
    assert (rows["seeding_done"], rows["total"]) == (True, 10)


async def _claims(sm: async_sessionmaker[AsyncSession], batch_id: int) -> list[tuple[int, int]]:
    async with sm() as s:
        rows = await s.execute(
            select(SeedClaim.after_id, SeedClaim.until_id)
            .where(SeedClaim.batch_id == batch_id)
            .order_by(SeedClaim.after_id)
        )
    return [(after, until) for after, until in rows]


@pytest.mark.external_workers
@pytest.mark.parametrize(
    ("settings_overrides", "claimed_to"),
    [
        # However quick the first page, a millionth of a second fits no items: one chunk.
        ({"jobs_per_seed": 4, "chunk_size": 5, "seed_page_seconds": 1e-6}, 9),
        # A minute fits more than jobs_per_seed chunks: the full 20.
        ({"jobs_per_seed": 4, "chunk_size": 5, "seed_page_seconds": 60}, 24),
    ],
)
async def test_the_page_claimed_ahead_holds_what_the_pace_fits(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    claimed_to: int,
) -> None:
    """The first page (5 items) claims the next one sized by its own pace: what fits in
    ``seed_page_seconds``, between one chunk and ``jobs_per_seed`` chunks; every item is
    still seeded once."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    first = await seeding.seed_page(ctx, batch["id"])
    assert first is not None and first.ahead
    t = setup.task_ids
    assert await _claims(sessionmaker, batch["id"]) == [(t[4], t[claimed_to])]
    await _seed_to_the_end(ctx, batch["id"])
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"], rows["logs"]) == (30, 30, 0, 30)


def test_a_page_size_follows_the_pace_between_one_chunk_and_jobs_per_seed() -> None:
    """1 000 items in 0.5 s fit 700 in 0.35 s; ten times faster, the cap of 10 chunks;
    ten items a second, one chunk."""
    ctx = cast(JobContext, SimpleNamespace(settings=Settings(seed_page_seconds=0.35)))
    batch = Batch(chunk_size=100)
    assert seeding._page_size(ctx, batch, first=False, pace=(1000, 0.5)) == 700
    assert seeding._page_size(ctx, batch, first=False, pace=(1000, 0.05)) == 1000
    assert seeding._page_size(ctx, batch, first=False, pace=(10, 1.0)) == 100
    assert seeding._page_size(ctx, batch, first=False) == 1000
    assert seeding._page_size(ctx, batch, first=True) == 100


@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 4}])
async def test_a_new_seed_job_seeds_the_claim_left_ahead_before_claiming(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seed job that starts after a page claimed the next one ahead (the last
    invocation ran out of its slice) seeds that claim first: no claim transaction, and
    so no page claimed at the full size instead of the pace's."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    batch = await create(alice, APPROVE_ALL)
    ctx, _queue = recording_context(app)
    first = await seeding.seed_page(ctx, batch["id"])
    assert first is not None and first.ahead

    monkeypatch.setattr(seeding, "_claim", _no_claim_transaction)
    monkeypatch.setattr(seeding, "SEED_SLICE_S", 3600.0)
    await seeding.seed(ctx, batch["id"])
    rows = await _rows(sessionmaker, batch["id"])
    assert (rows["details"], rows["items"], rows["claims"], rows["logs"]) == (10, 10, 0, 10)
    assert (rows["seeding_done"], rows["total"]) == (True, 10)


@pytest.mark.external_workers
@pytest.mark.parametrize(
    ("limit", "status", "success"),
    [
        (None, "completed", 10),  # every item applied as it was seeded
        (1000.0, "running", 0),  # rate-limited: the executors apply it, at their pace
    ],
)
async def test_the_seed_job_that_ends_seeding_completes_a_batch_with_nothing_pending(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    limit: float | None,
    status: str,
    success: int,
) -> None:
    """A batch applied while it was seeded leaves its executors nothing: the page that
    ends seeding completes it in its own transaction and wakes no executor. One that
    left items pending stays running for its executors."""
    await expense_setup(sessionmaker, admin, alice, bob, 10)
    batch = await create(alice, {**APPROVE_ALL, "max_items_per_second": limit})
    ctx, queue = recording_context(app)
    await seeding.seed(ctx, batch["id"])
    seen = (await alice.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (seen["status"], seen["success"], seen["total"]) == (status, success, 10)
    # Executors are woken only for items left pending.
    assert ("execute" in {w.job for w in queue.sent}) == (status == "running")
