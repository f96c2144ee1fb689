"""Execution rules that are not about one operation: per-item isolation when a bulk
statement fails, per-type configuration, and the history purge cron."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches.recovery import purge
from app.config import Settings
from app.domain import BatchRun, Outcome, WorkItem
from app.models import Batch, BatchDetail, ProcessLog
from app.operations.registry import OPERATIONS, BulkSql, Operation, register
from app.operations.targets import INSTANCES
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, Actor

POISON = 13


class PoisonableOperation(Operation):
    """A test operation whose bulk statement fails when the chunk holds the poison item
    (a real database error: a NOT NULL violation), like one bad row in a bulk write."""

    type = "test.poisonable"
    target = INSTANCES

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        await session.execute(
            text(
                "INSERT INTO process_logs (instance_id, action, created_at) "
                "SELECT id, CASE WHEN id = :poison THEN NULL ELSE 'test.touched' END, "
                "CURRENT_TIMESTAMP FROM process_instances WHERE id IN ("
                + ",".join(str(int(i.item_id)) for i in items)
                + ")"
            ),
            {"poison": POISON},
        )
        return [Outcome.success() for _ in items]


@pytest.fixture
def poisonable() -> Any:
    register(PoisonableOperation())
    yield
    OPERATIONS.pop("test.poisonable", None)


async def test_a_failing_bulk_statement_fails_only_the_bad_item(
    poisonable: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 30)
    batch = await create(
        admin, {"type": "test.poisonable", "ids": list(range(1, 31)), "chunk_size": 10}
    )
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 29, 1)
    [failed] = await details(admin, batch["id"], status="failed")
    assert failed["item_id"] == POISON
    # a sentence for the user; the database's own text stays in the log
    assert failed["error"] == (
        f"Item {POISON} could not be applied because of an unexpected error."
    )
    assert (failed["error_code"], failed["retryable"]) == ("internal", False)
    async with sessionmaker() as s:
        touched = set(
            await s.scalars(
                select(ProcessLog.instance_id).where(ProcessLog.action == "test.touched")
            )
        )
    assert touched == set(range(1, 31)) - {POISON}  # each applied once, the bad one never


class FastPoisonableOperation(PoisonableOperation):
    """The same, with a PostgreSQL fast path (fused with the claim) that fails the same
    way: a chunk holding the poison item must fall back to the plain path, then isolate."""

    type = "test.fast_poisonable"

    async def bulk_sql(self, session: AsyncSession, run: BatchRun) -> BulkSql | None:
        return BulkSql(
            "applied AS (INSERT INTO process_logs (instance_id, action, created_at) "
            "SELECT item_id, CASE WHEN item_id = :poison THEN NULL ELSE 'test.fast' END, "
            "CURRENT_TIMESTAMP FROM claimed RETURNING instance_id AS id)",
            {"poison": POISON},
        )


@pytest.mark.skipif(not ON_POSTGRES, reason="the fused fast path runs on PostgreSQL only")
async def test_a_failing_fast_path_falls_back_then_isolates(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    register(FastPoisonableOperation())
    try:
        await expense_setup(sessionmaker, admin, alice, bob, 30)
        batch = await create(
            admin, {"type": "test.fast_poisonable", "ids": list(range(1, 31)), "chunk_size": 10}
        )
        done = await wait_for(admin, batch["id"])
    finally:
        OPERATIONS.pop("test.fast_poisonable", None)
    assert (done["status"], done["success"], done["failed"]) == ("completed", 29, 1)
    [failed] = await details(admin, batch["id"], status="failed")
    assert failed["item_id"] == POISON
    async with sessionmaker() as s:
        logs = (await s.execute(select(ProcessLog.instance_id, ProcessLog.action))).all()
    by_action: dict[str, list[int]] = {}
    for instance_id, action in logs:
        by_action.setdefault(action, []).append(instance_id)
    # Chunks without the poison went the fast way; a chunk holding it fell back to the
    # plain path (which chunks those are depends on the parallel executors). Every item
    # applied exactly once, by one path or the other; the bad one never.
    fast, plain = by_action["test.fast"], by_action["test.touched"]
    assert fast and plain
    assert sorted(fast + plain) == [i for i in range(1, 31) if i != POISON]


@pytest.mark.parametrize(
    "settings_overrides",
    [{"type_config": {"task.approve": {"chunk_size": 7, "max_retries": 1, "history_ttl": 60}}}],
)
async def test_per_type_config_and_per_batch_overrides(alice: Actor, settings: Settings) -> None:
    typed = await create(alice, {"type": "task.approve", "ids": [], "params": {}})
    assert (typed["chunk_size"], typed["max_retries"]) == (7, 1)
    own = await create(
        alice,
        {"type": "task.approve", "ids": [], "params": {}, "chunk_size": 3, "max_retries": 0},
    )
    assert (own["chunk_size"], own["max_retries"]) == (3, 0)
    other = await create(alice, {"type": "instance.suspend", "ids": []})
    assert (other["chunk_size"], other["max_retries"]) == (settings.chunk_size, 3)


def test_type_config_comes_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_TYPE_CONFIG", '{"instance.suspend": {"chunk_size": 2000}}')
    monkeypatch.setenv("BATCH_FAILURE_THRESHOLD", "0.25")
    s = Settings()
    assert s.for_type("instance.suspend").chunk_size == 2000
    assert s.for_type("task.approve").chunk_size == s.chunk_size
    assert s.for_type("task.approve").failure_threshold == 0.25


@pytest.mark.parametrize(
    "settings_overrides", [{"type_config": {"instance.suspend": {"history_ttl": 0}}}]
)
async def test_purge_removes_only_expired_finished_batches(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 3)
    expired = await create(admin, {"type": "instance.suspend", "ids": [1, 2, 3]})
    await wait_for(admin, expired["id"])
    kept = await create(  # default TTL (30 days): stays
        alice, {"type": "task.approve", "ids": [1], "params": {"form_data": {"category": "meals"}}}
    )
    await wait_for(alice, kept["id"])

    await purge(app.state.jobs)
    assert (await admin.get(f"/api/v1/batches/{expired['id']}")).status_code == 404
    assert (await alice.get(f"/api/v1/batches/{kept['id']}")).status_code == 200
    async with sessionmaker() as s:
        left = await s.scalar(select(func.count()).where(BatchDetail.batch_id == expired["id"]))
        batches = list(await s.scalars(select(Batch.id)))
    assert left == 0 and batches == [kept["id"]]
