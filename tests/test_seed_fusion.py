"""Issue 13: a filter batch of a lock-free type applied while it is seeded (PostgreSQL),
and a filter's size estimated at creation, counted exactly by the seed job."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ActionLog, BatchDetail, ProcessInstance, ProcessLog, Task
from app.operations import pipeline_sql, targets
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

SUSPEND_ALL = {"type": "instance.suspend", "filter": {"definition_key": "expense"}}


async def _instances(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


async def _end_one(sm: async_sessionmaker[AsyncSession], instance_id: int) -> None:
    async with sm() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instance_id)
            .values(status="completed")
        )
        await s.commit()


async def _one_detail_per_item(sm: async_sessionmaker[AsyncSession], batch_id: int) -> None:
    async with sm() as s:
        rows = await s.scalar(select(func.count()).where(BatchDetail.batch_id == batch_id))
        items = await s.scalar(
            select(func.count(func.distinct(BatchDetail.item_id))).where(
                BatchDetail.batch_id == batch_id
            )
        )
    assert rows == items


@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 40}])
async def test_filter_batch_applied_while_seeding_says_why_for_the_rest(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Pages of 40: the ones that move are recorded ``success`` as they are seeded, the
    one that cannot (completed) is decided by the executor; one detail and one log row
    per item, counters equal to the rows."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 130)
    instances = await _instances(sessionmaker, setup.task_ids)
    await _end_one(sessionmaker, instances[57])

    batch = await create(admin, SUSPEND_ALL)
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["total"], done["success"], done["failed"]) == (
        "completed",
        130,
        129,
        1,
    )
    [failed] = await details(admin, batch["id"], status="failed")
    assert failed["item_id"] == instances[57]
    assert failed["error"] == (
        f"Process {instances[57]} is completed; only active processes can be suspended."
    )
    await _one_detail_per_item(sessionmaker, batch["id"])
    async with sessionmaker() as s:
        logs = await s.scalar(select(func.count()).where(ProcessLog.batch_id == batch["id"]))
        suspended = await s.scalar(
            select(func.count()).where(ProcessInstance.status == "suspended")
        )
    assert (logs, suspended) == (129, 129)


async def test_a_failing_fused_seed_page_is_seeded_plainly(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = pipeline_sql.SEED_AND_APPLY.replace("count(*) AS n", "count(*) / 0 AS n")
    assert broken != pipeline_sql.SEED_AND_APPLY
    monkeypatch.setattr(pipeline_sql, "SEED_AND_APPLY", broken)
    setup = await expense_setup(sessionmaker, admin, alice, bob, 60)
    batch = await create(admin, SUSPEND_ALL)
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 60, 0)
    assert len(setup.task_ids) == 60
    async with sessionmaker() as s:
        logs = await s.scalar(select(func.count()).where(ProcessLog.batch_id == batch["id"]))
    assert logs == 60  # the failed fused page left nothing behind
    await _one_detail_per_item(sessionmaker, batch["id"])


@pytest.mark.skipif(not ON_POSTGRES, reason="the planner's estimate is PostgreSQL's")
async def test_an_estimated_total_is_exact_once_seeding_starts(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(targets, "ESTIMATE_FROM", 1)
    await expense_setup(sessionmaker, admin, alice, bob, 50)
    approve = await create(
        alice,
        {
            "type": "task.approve",
            "filter": {"definition_key": "expense", "node_id": "manager"},
            "params": {"decision": "approve", "form_data": {"category": "travel"}},
        },
    )
    done = await wait_for(alice, approve["id"])
    assert (done["status"], done["total"], done["success"]) == ("completed", 50, 50)
    suspend = await create(admin, SUSPEND_ALL)
    done = await wait_for(admin, suspend["id"])
    assert (done["status"], done["total"], done["success"]) == ("completed", 50, 50)


@pytest.mark.skipif(not ON_POSTGRES, reason="the planner's estimate is PostgreSQL's")
@pytest.mark.parametrize("settings_overrides", [{"max_items": 5}])
async def test_the_item_limit_holds_when_the_total_was_estimated(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An estimate over the limit: counted up to the limit + 1 and refused (413). An
    estimate under it that is wrong: the seed job counts before the first page, and the
    batch ends aborted with nothing applied, the reason in the action log."""
    monkeypatch.setattr(targets, "ESTIMATE_FROM", 1)
    await expense_setup(sessionmaker, admin, alice, bob, 8)
    estimate = 100

    async def estimated(session: AsyncSession, stmt: Any) -> int:
        return estimate

    monkeypatch.setattr(targets, "estimated_rows", estimated)
    r = await admin.post("/api/v1/batches", json=SUSPEND_ALL)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == "This batch would hold more than 5 items; the limit is 5."

    estimate = 3
    batch = await create(admin, SUSPEND_ALL)
    assert batch["total"] == 3
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["total"], done["success"]) == ("aborted", 0, 0)
    async with sessionmaker() as s:
        active = await s.scalar(select(func.count()).where(ProcessInstance.status == "active"))
        refused = await s.scalar(
            select(ActionLog.detail).where(
                ActionLog.batch_id == batch["id"], ActionLog.action == "batch.refused"
            )
        )
        rows = await s.scalar(select(func.count()).where(BatchDetail.batch_id == batch["id"]))
    assert (active, rows) == (8, 0)
    assert refused == {"error": "This batch would hold 8 items; the limit is 5."}


APPROVE_ALL = {
    "type": "task.approve",
    "filter": {"definition_key": "expense", "node_id": "manager"},
}


@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 40}])
async def test_approve_batch_applied_while_seeding_leaves_the_doubtful_to_the_executor(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """No form data: only processes that already hold the required category can be
    approved. Those pass while seeding (PostgreSQL); the others, a suspended process
    and a task another batch holds end as the executor says, the same on both
    backends."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 130)
    instances = await _instances(sessionmaker, setup.task_ids)
    has_category = instances[:65]
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id.in_(has_category))
            .values(form_data={"amount": 5, "category": "meals"})
        )
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instances[3])
            .values(status="suspended")
        )
        await s.execute(
            update(Task).where(Task.id == setup.task_ids[7]).values(locked_by_batch_id=987654)
        )
        await s.commit()

    batch = await create(alice, {**APPROVE_ALL, "params": {"comment": "ok"}})
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["total"], done["success"], done["failed"]) == (
        "completed",
        130,
        63,
        67,
    )
    failed = {d["item_id"]: d["error"] for d in await details(alice, batch["id"], status="failed")}
    assert failed[setup.task_ids[3]] == (
        f"The process of task {setup.task_ids[3]} is suspended, not active."
    )
    assert failed[setup.task_ids[7]] == f"Task {setup.task_ids[7]} is locked by batch 987654."
    assert failed[setup.task_ids[100]] == "Category is required"
    await _one_detail_per_item(sessionmaker, batch["id"])
    async with sessionmaker() as s:
        finance = await s.scalar(
            select(func.count()).where(Task.node_id == "finance", Task.status == "pending")
        )
        logs = await s.scalar(
            select(func.count()).where(
                ProcessLog.batch_id == batch["id"], ProcessLog.action == "task.approved"
            )
        )
        held = await s.scalar(select(func.count()).where(Task.locked_by_batch_id == batch["id"]))
        moved = (
            await s.execute(
                select(ProcessInstance.current_node_id, ProcessInstance.form_data).where(
                    ProcessInstance.id == instances[10]
                )
            )
        ).one()
        task = await s.get(Task, setup.task_ids[10])
    assert (finance, logs) == (63, 63)
    assert held == 0  # a failure that needs fixing frees its task at once
    assert moved == ("finance", {"amount": 5, "category": "meals"})
    assert task is not None and (task.status, task.decision, task.comment) == (
        "completed",
        "approve",
        "ok",
    )


async def test_approve_batch_with_refused_form_data_fails_every_item_alike(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 30)
    batch = await create(alice, {**APPROVE_ALL, "params": {"form_data": {"category": "bogus"}}})
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (0, 30)
    errors = {d["error"] for d in await details(alice, batch["id"], status="failed")}
    assert len(errors) == 1 and "Category" in errors.pop()


@pytest.mark.parametrize("settings_overrides", [{"jobs_per_seed": 1, "chunk_size": 40}])
async def test_approve_while_seeding_merges_form_data_as_the_executor_does(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """The shared form data of a filter batch applied while seeding (one patch for every
    process) ends exactly as a listed batch's, which the executor applies task by task:
    an emptied field holds null, a list stays a list, what was not sent is kept."""
    definition = expense_definition(alice.id, bob.id)
    definition["nodes"][0]["fields"] = {"category": "write", "city": "write", "tags": "write"}
    created = await create_definition(admin, definition)
    task_ids = await bulk_tasks(
        sessionmaker,
        definition_id=created["id"],
        definition_key="expense",
        node_id="manager",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=60,
    )
    form = {"category": "meals", "city": "", "tags": "urgent, client"}
    by_filter = await create(alice, {**APPROVE_ALL, "params": {"form_data": form}})
    listed = await bulk_tasks(
        sessionmaker,
        definition_id=created["id"],
        definition_key="expense-listed",
        node_id="manager",
        assignee_id=alice.id,
        initiator_id=admin.id,
        n=3,
    )
    by_ids = await create(
        alice, {"type": "task.approve", "ids": listed, "params": {"form_data": form}}
    )
    for batch in (by_filter, by_ids):
        done = await wait_for(alice, batch["id"])
        assert (done["status"], done["failed"]) == ("completed", 0)
    assert by_filter["total"] == 60
    instances = await _instances(sessionmaker, [task_ids[0], task_ids[-1], listed[0]])
    async with sessionmaker() as s:
        forms = {
            i: f
            for i, f in await s.execute(
                select(ProcessInstance.id, ProcessInstance.form_data).where(
                    ProcessInstance.id.in_(instances)
                )
            )
        }
    first, last, reference = (forms[i] for i in instances)
    assert first == {
        "amount": 101,
        "category": "meals",
        "city": None,
        "date": "2026-01-15",
        "tags": ["urgent", "client"],
    }
    assert last["amount"] == 160 and "city" in last and last["city"] is None
    assert set(reference) == set(first) and reference["city"] is None
    assert reference["tags"] == ["urgent", "client"]
