"""A 100k-item filter batch: created at once, seeded page by page with flat memory.

The peak memory growth is *measured and printed* (``pytest -s`` or the -rA report),
not asserted: speed and size belong to bench/, behaviour to the tests.
"""

from __future__ import annotations

import resource
import time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import BatchDetail, Task
from tests.batch_helpers import create, eventually, expense_setup
from tests.conftest import Actor

N = 100_000


async def bulk_instances(
    sm: async_sessionmaker[AsyncSession], definition_id: int, assignee: int, initiator: int, n: int
) -> None:
    """n instances + n pending manager tasks with two INSERT … SELECT statements."""
    series = (
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
        "SELECT i FROM s"
    )
    async with sm() as session:
        await session.execute(
            text(
                "INSERT INTO process_instances (definition_id, definition_key, title, "
                "department_id, initiator_id, status, current_node_id, form_data, variables, "
                "created_at, updated_at) "
                f"SELECT :d, 'expense', 'Trip ' || i, 10, :u, 'active', 'manager', "
                f"'{{\"amount\": 5}}', '{{}}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP "
                f"FROM ({series}) AS seq"
            ),
            {"d": definition_id, "u": initiator, "n": n},
        )
        await session.execute(
            text(
                "INSERT INTO tasks (instance_id, node_id, assignee_id, status, created_at) "
                "SELECT id, 'manager', :a, 'pending', CURRENT_TIMESTAMP FROM process_instances "
                "WHERE current_node_id = 'manager' ORDER BY id"
            ),
            {"a": assignee},
        )
        await session.commit()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("settings_overrides", [{"chunk_size": 1000}])
async def test_100k_filter_batch_seeds_with_flat_memory(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 0)
    await bulk_instances(sessionmaker, setup.definition["id"], alice.id, admin.id, N)

    before = peak_rss_mb()
    started = time.perf_counter()
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "filter": {"definition_key": "expense", "node_id": "manager"},
            "params": {"decision": "approve", "form_data": {"category": "travel"}},
            # Created paused: seeding goes on alone, so what we see is seeding's footprint.
            "start_suspended": True,
        },
    )
    post_s = time.perf_counter() - started
    assert batch["total"] == N and batch["status"] == "suspended"

    async def seeded() -> int:
        async with sessionmaker() as s:
            query = select(func.count()).where(BatchDetail.batch_id == batch["id"])
            return int(await s.scalar(query) or 0)

    await eventually(seeded, f"{N} details seeded", 150, until=lambda n: n == N)
    seeded_s = time.perf_counter() - started
    async with sessionmaker() as s:
        locked = await s.scalar(select(func.count()).where(Task.locked_by_batch_id == batch["id"]))
        duplicates = await s.scalar(
            select(func.count()).select_from(
                select(BatchDetail.item_id)
                .where(BatchDetail.batch_id == batch["id"])
                .group_by(BatchDetail.item_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    assert duplicates == 0
    assert locked == N  # every item locked, none applied while suspended
    assert (await alice.get(f"/api/v1/batches/{batch['id']}")).json()["success"] == 0
    print(
        f"\n[scale] {N} items: POST {post_s * 1000:.0f} ms, seeded in {seeded_s:.1f} s, "
        f"peak RSS {before:.0f} → {peak_rss_mb():.0f} MB "
        f"(+{peak_rss_mb() - before:.0f} MB for the whole test process)"
    )
    r = await alice.delete(f"/api/v1/batches/{batch['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None))) == 0
