"""instance.suspend / instance.resume batches: per-item permission, idempotence, logs."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, BatchDetail, ProcessInstance, ProcessLog, Task
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import Actor


async def _instance_ids(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


async def _statuses(sm: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sm() as s:
        rows = await s.execute(
            select(ProcessInstance.status, func.count()).group_by(ProcessInstance.status)
        )
        return {status: n for status, n in rows}


async def test_admin_suspends_by_filter_then_resumes_by_ids(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 500)
    instances = await _instance_ids(sessionmaker, setup.task_ids)
    async with sessionmaker() as s:  # one completed instance: not touched by the filter
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instances[0])
            .values(status="completed")
        )
        await s.commit()

    batch = await create(
        admin,
        {"type": "instance.suspend", "filter": {"definition_key": "expense", "status": "active"}},
    )
    assert batch["total"] == 499
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"], done["ignored"]) == (
        "completed",
        499,
        0,
        0,
    )
    assert await _statuses(sessionmaker) == {"suspended": 499, "completed": 1}
    async with sessionmaker() as s:
        logs = await s.scalar(
            select(func.count()).where(
                ProcessLog.batch_id == batch["id"], ProcessLog.action == "instance.suspend"
            )
        )
    assert logs == 499

    again = await create(admin, {"type": "instance.suspend", "ids": instances[:10]})
    done = await wait_for(admin, again["id"])
    assert (done["success"], done["failed"], done["ignored"]) == (0, 1, 9)
    failed = await details(admin, again["id"], status="failed")
    assert failed[0]["item_id"] == instances[0]
    assert failed[0]["error"] == (
        f"Process {instances[0]} is completed; only active processes can be suspended."
    )

    resume = await create(admin, {"type": "instance.resume", "ids": instances, "chunk_size": 64})
    done = await wait_for(admin, resume["id"])
    assert (done["success"], done["failed"]) == (499, 1)
    assert await _statuses(sessionmaker) == {"active": 499, "completed": 1}


async def test_monitor_grant_decides_per_item(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    instances = await _instance_ids(sessionmaker, setup.task_ids)
    # alice holds a task in each instance: she sees them, but may not operate on them
    denied = await create(alice, {"type": "instance.suspend", "ids": instances})
    done = await wait_for(alice, denied["id"])
    assert (done["failed"], done["success"]) == (5, 0)
    errors = {d["error"] for d in await details(alice, denied["id"])}
    assert errors == {"You may not suspend processes of expense."}
    # bob sees none of them: each fails exactly like a missing one (no definition named)
    hidden = await create(bob, {"type": "instance.suspend", "ids": [*instances, 999_999]})
    done = await wait_for(bob, hidden["id"])
    assert (done["failed"], done["success"]) == (6, 0)
    errors = {d["error"] for d in await details(bob, hidden["id"])}
    assert errors == {f"Process {i} does not exist." for i in [*instances, 999_999]}
    assert await _statuses(sessionmaker) == {"active": 5}

    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 201, r.text
    r = await alice.post(f"/api/v1/batches/{denied['id']}/retry")
    assert r.status_code == 202 and r.json()["requeued"] == 5
    done = await wait_for(alice, denied["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 5, 0)
    assert await _statuses(sessionmaker) == {"suspended": 5}


async def test_instance_params_are_validated(alice: Actor) -> None:
    r = await alice.post(
        "/api/v1/batches", json={"type": "instance.suspend", "ids": [1], "params": {"x": 1}}
    )
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["params", "x"]
    r = await alice.post(
        "/api/v1/batches", json={"type": "instance.resume", "filter": {"node_id": "manager"}}
    )
    assert r.status_code == 422 and "node_id" in r.json()["detail"]


async def test_an_item_listed_twice_is_applied_once_and_counted_once(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Creation de-duplicates ids, but a detail table may still hold an item twice (a
    repaired row, a future import): the item moves once, the repeat is ``ignored``, and
    the counters still equal the detail counts (on PostgreSQL this is the fused path)."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 10)
    instances = await _instance_ids(sessionmaker, setup.task_ids)
    batch = await create(
        admin, {"type": "instance.suspend", "ids": instances, "start_suspended": True}
    )
    async with sessionmaker() as s:
        s.add(BatchDetail(batch_id=batch["id"], item_id=instances[4], status="pending"))
        await s.execute(update(Batch).where(Batch.id == batch["id"]).values(total=11))
        await s.commit()
    assert (await admin.post(f"/api/v1/batches/{batch['id']}/activate")).status_code == 200
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["total"], done["success"], done["ignored"]) == (
        "completed",
        11,
        10,
        1,
    )
    rows = await details(admin, batch["id"])
    assert sorted(d["status"] for d in rows if d["item_id"] == instances[4]) == [
        "ignored",
        "success",
    ]
    async with sessionmaker() as s:
        logs = await s.scalar(
            select(func.count()).where(
                ProcessLog.batch_id == batch["id"], ProcessLog.instance_id == instances[4]
            )
        )
    assert logs == 1
    assert await _statuses(sessionmaker) == {"suspended": 10}
