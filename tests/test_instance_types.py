"""instance.terminate, instance.complete and instance.set_variables: exact counts with
reasons, per-item permission, logs, and the terminate/approve interplay (a terminated
process's pending task is cancelled and unlocked; an approve batch that reaches it
later records it ignored)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, ProcessInstance, ProcessLog, Task
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def _instances(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


async def _set_status(sm: async_sessionmaker[AsyncSession], ids: list[int], status: str) -> None:
    async with sm() as s:
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id.in_(ids)).values(status=status)
        )
        await s.commit()


async def _rows(sm: async_sessionmaker[AsyncSession], ids: list[int]) -> dict[int, Any]:
    async with sm() as s:
        result = await s.execute(
            select(
                ProcessInstance.id,
                ProcessInstance.status,
                ProcessInstance.current_node_id,
                ProcessInstance.variables,
            ).where(ProcessInstance.id.in_(ids))
        )
        return {r.id: r for r in result}


async def _task_rows(sm: async_sessionmaker[AsyncSession], instance_ids: list[int]) -> list[Any]:
    async with sm() as s:
        result = await s.execute(
            select(Task.instance_id, Task.status, Task.locked_by_batch_id, Task.completed_at).where(
                Task.instance_id.in_(instance_ids)
            )
        )
        return list(result)


async def _logs(sm: async_sessionmaker[AsyncSession], batch_id: int) -> dict[int, str | None]:
    async with sm() as s:
        rows = await s.execute(
            select(ProcessLog.instance_id, ProcessLog.message).where(
                ProcessLog.batch_id == batch_id
            )
        )
        return {iid: message for iid, message in rows}


async def test_terminate_cancels_pending_tasks_with_exact_outcomes(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 12)
    ids = await _instances(sessionmaker, setup.task_ids)
    await _set_status(sessionmaker, ids[:2], "suspended")  # terminable too
    await _set_status(sessionmaker, ids[2:4], "terminated")  # already there: ignored
    await _set_status(sessionmaker, ids[4:6], "completed")  # cannot leave: failed
    batch = await create(
        admin,
        {
            "type": "instance.terminate",
            "ids": [*ids, 999_999],
            "params": {"reason": "budget frozen"},
            "chunk_size": 5,
        },
    )
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["ignored"], done["failed"]) == (
        "completed",
        8,
        2,
        3,
    )
    errors = {d["item_id"]: d["error"] for d in await details(admin, batch["id"])}
    assert errors[ids[2]] == f"Process {ids[2]} is already terminated."
    assert errors[ids[4]] == (
        f"Process {ids[4]} is completed; only active or suspended processes can be terminated."
    )
    assert errors[999_999] == "Process 999999 does not exist."
    rows = await _rows(sessionmaker, ids)
    assert {i for i, r in rows.items() if r.status == "terminated"} == {*ids[:4], *ids[6:]}
    assert {rows[i].status for i in ids[4:6]} == {"completed"}
    terminated = [*ids[:2], *ids[6:]]
    tasks = await _task_rows(sessionmaker, terminated)
    assert len(tasks) == 8 and {t.status for t in tasks} == {"cancelled"}
    assert all(t.completed_at is not None for t in tasks)
    assert await _logs(sessionmaker, batch["id"]) == {i: "budget frozen" for i in terminated}


async def test_complete_force_completes_and_clears_the_step(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    ids = await _instances(sessionmaker, setup.task_ids)
    await _set_status(sessionmaker, ids[:1], "completed")
    await _set_status(sessionmaker, ids[1:2], "rejected")
    batch = await create(
        admin, {"type": "instance.complete", "filter": {"definition_key": "expense"}}
    )
    done = await wait_for(admin, batch["id"])
    assert (done["success"], done["ignored"], done["failed"]) == (4, 1, 1)
    rows = await _rows(sessionmaker, ids)
    assert {i for i, r in rows.items() if r.status == "completed"} == {ids[0], *ids[2:]}
    assert all(rows[i].current_node_id is None for i in ids[2:])
    assert rows[ids[1]].status == "rejected" and rows[ids[1]].current_node_id == "manager"
    assert {t.status for t in await _task_rows(sessionmaker, ids[2:])} == {"cancelled"}
    assert set(await _logs(sessionmaker, batch["id"])) == set(ids[2:])
    r = await admin.post(
        "/api/v1/batches", json={"type": "instance.complete", "ids": [1], "params": {"x": 1}}
    )
    assert r.status_code == 422


async def test_permission_is_decided_per_item(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """alice holds a grant on expense only: among one batch, her expense instances
    terminate, her visible 'trip' instances fail 'You may not …', and instances she
    cannot see fail like missing ones."""
    expense = await _instances(
        sessionmaker, (await expense_setup(sessionmaker, admin, alice, bob, 3)).task_ids
    )
    trip = await create_definition(admin, {**expense_definition(alice.id, bob.id), "key": "trip"})
    trips = await _instances(
        sessionmaker,
        await bulk_tasks(
            sessionmaker,
            definition_id=trip["id"],
            definition_key="trip",
            node_id="manager",
            assignee_id=alice.id,
            initiator_id=admin.id,
            n=2,
        ),
    )
    hidden = await _instances(
        sessionmaker,
        await bulk_tasks(
            sessionmaker,
            definition_id=trip["id"],
            definition_key="leave",  # not granted, not hers: hidden from alice
            node_id="manager",
            assignee_id=bob.id,
            initiator_id=bob.id,
            n=1,
        ),
    )
    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 201, r.text
    batch = await create(
        alice,
        {"type": "instance.terminate", "ids": [*expense, *trips, *hidden], "chunk_size": 2},
    )
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (3, 3)
    errors = {d["item_id"]: d["error"] for d in await details(alice, batch["id"], status="failed")}
    assert errors == {
        **{i: "You may not terminate processes of trip." for i in trips},
        hidden[0]: f"Process {hidden[0]} does not exist.",
    }
    rows = await _rows(sessionmaker, [*expense, *trips, *hidden])
    assert {i for i, r in rows.items() if r.status == "terminated"} == set(expense)


async def test_terminate_releases_approve_locks_and_the_approve_batch_ignores_them(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    ids = await _instances(sessionmaker, setup.task_ids)
    approve = await create(
        alice,
        {
            "type": "task.approve",
            "ids": setup.task_ids,
            "params": APPROVE,
            "start_suspended": True,
        },
    )
    assert {t.locked_by_batch_id for t in await _task_rows(sessionmaker, ids)} == {approve["id"]}
    stop = await create(admin, {"type": "instance.terminate", "ids": ids[:2]})
    assert (await wait_for(admin, stop["id"]))["success"] == 2
    tasks = {t.instance_id: t for t in await _task_rows(sessionmaker, ids)}
    assert {(tasks[i].status, tasks[i].locked_by_batch_id) for i in ids[:2]} == {
        ("cancelled", None)
    }
    assert {tasks[i].locked_by_batch_id for i in ids[2:]} == {approve["id"]}
    r = await alice.post(f"/api/v1/batches/{approve['id']}/activate")
    assert r.status_code == 200, r.text
    done = await wait_for(alice, approve["id"])
    # A cancelled task is a failure that explains itself (nothing to decide, no retry).
    assert (done["success"], done["ignored"], done["failed"]) == (4, 0, 2)
    failed = {
        d["item_id"]: (d["error_code"], d["retryable"], d["error"])
        for d in await details(alice, approve["id"], status="failed")
    }
    assert failed == {
        t: (
            "wrong_state",
            False,
            f"Task {t} was cancelled when its process ended; there is nothing to decide.",
        )
        for t in setup.task_ids[:2]
    }


async def test_set_variables_merges_with_exact_outcomes(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 8)
    ids = await _instances(sessionmaker, setup.task_ids)
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id.in_(ids[:2]))
            .values(variables={"cost_center": "CC-7", "priority": 2})
        )
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id.in_(ids[2:4]))
            .values(variables={"cost_center": "CC-1", "keep": True})
        )
        await s.commit()
    await _set_status(sessionmaker, ids[4:5], "terminated")
    await _set_status(sessionmaker, ids[5:6], "suspended")
    wanted = {"cost_center": "CC-7", "priority": 2}
    batch = await create(
        admin,
        {
            "type": "instance.set_variables",
            "ids": ids,
            "params": {"variables": wanted},
            "chunk_size": 3,
        },
    )
    done = await wait_for(admin, batch["id"])
    assert (done["success"], done["ignored"], done["failed"]) == (5, 2, 1)
    errors = {d["item_id"]: d["error"] for d in await details(admin, batch["id"])}
    assert errors[ids[0]] == f"Process {ids[0]} already has these variables."
    assert errors[ids[4]] == (
        f"Process {ids[4]} is terminated; variables can only be set on active or suspended "
        "processes."
    )
    rows = await _rows(sessionmaker, ids)
    assert rows[ids[2]].variables == {"cost_center": "CC-7", "priority": 2, "keep": True}
    assert all(rows[i].variables == wanted for i in [ids[5], ids[6], ids[7]])
    assert rows[ids[4]].variables == {}
    logs = await _logs(sessionmaker, batch["id"])
    assert logs == {i: "set cost_center, priority" for i in [*ids[2:4], *ids[5:]]}


async def test_set_variables_params_are_checked_before_anything_is_written(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor
) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"variables": {}},
        {"variables": {f"k{i}": i for i in range(201)}},
        {"variables": {"note": "x" * 10_001}},
        {"variables": {"amount": "ok"}, "extra": 1},
    ]
    for params in cases:
        r = await admin.post(
            "/api/v1/batches",
            json={"type": "instance.set_variables", "ids": [1], "params": params},
        )
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "ValidationError"
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0


async def test_set_variables_tells_true_from_one_on_both_backends(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    ids = await _instances(sessionmaker, setup.task_ids)
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id.in_(ids)).values(variables={"a": 1})
        )
        await s.commit()
    batch = await create(
        admin, {"type": "instance.set_variables", "ids": ids, "params": {"variables": {"a": True}}}
    )
    done = await wait_for(admin, batch["id"])
    assert (done["success"], done["ignored"]) == (2, 0)
    rows = await _rows(sessionmaker, ids)
    assert all(rows[i].variables["a"] is True for i in ids)  # not 1 (1 == True in Python)
