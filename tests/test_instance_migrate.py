"""instance.migrate batches: versions, node mapping, per-item outcomes, permission, and
the params checks that refuse a batch before anything is written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, ProcessDefinition, ProcessInstance, ProcessLog, Task
from app.operations import BatchRun, get_operation
from tests.batch_helpers import create, details, expense_setup, statements_of_chunk, wait_for
from tests.conftest import Actor
from tests.factories import approve, create_definition, expense_definition, start_instance


def _renamed(manager_id: int, finance_id: int) -> dict[str, Any]:
    """The expense definition with its first step renamed ``manager`` → ``lead``."""
    payload = expense_definition(manager_id, finance_id)
    payload["nodes"][0]["id"] = "lead"
    return payload


async def _instances(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


async def _state(sm: async_sessionmaker[AsyncSession], ids: list[int]) -> dict[int, Any]:
    """instance id → (definition_id, current_node_id, sorted pending task node ids)."""
    async with sm() as s:
        rows = await s.execute(
            select(
                ProcessInstance.id, ProcessInstance.definition_id, ProcessInstance.current_node_id
            ).where(ProcessInstance.id.in_(ids))
        )
        out: dict[int, tuple[int, str | None, list[str]]] = {
            r.id: (r.definition_id, r.current_node_id, []) for r in rows
        }
        tasks = await s.execute(
            select(Task.instance_id, Task.node_id).where(
                Task.instance_id.in_(ids), Task.status == "pending"
            )
        )
        for instance_id, node_id in tasks:
            out[instance_id][2].append(node_id)
    return {k: (d, n, sorted(t)) for k, (d, n, t) in out.items()}


async def _logs(sm: async_sessionmaker[AsyncSession], batch_id: int) -> dict[int, str | None]:
    async with sm() as s:
        rows = await s.execute(
            select(ProcessLog.instance_id, ProcessLog.message).where(
                ProcessLog.batch_id == batch_id, ProcessLog.action == "instance.migrate"
            )
        )
        return {r.instance_id: r.message for r in rows}


async def _to_finance(alice: Actor, instance_ids: list[int]) -> None:
    """Approve the manager step of these instances, so they wait at ``finance``."""
    r = await alice.get(
        "/api/v1/tasks", params={"status": "pending", "node_id": "manager", "page_size": 1000}
    )
    by_instance = {t["instance_id"]: t["id"] for t in r.json()["items"]}
    for iid in instance_ids:
        r = await approve(alice, by_instance[iid], form_data={"category": "travel"})
        assert r.status_code == 200, r.text


def _migrate(ids: list[int], version: int = 2, **params: Any) -> dict[str, Any]:
    return {
        "type": "instance.migrate",
        "ids": ids,
        "params": {"definition_key": "expense", "target_version": version, **params},
    }


async def test_migrates_without_mapping_then_ignores_a_second_run(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)
    ids = await _instances(sessionmaker, setup.task_ids)
    await _to_finance(alice, ids[:5])
    v2 = await create_definition(admin, expense_definition(alice.id, bob.id))
    assert v2["version"] == 2

    batch = await create(admin, {**_migrate(ids), "chunk_size": 7})
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"], done["ignored"]) == (
        "completed",
        30,
        0,
        0,
    )
    state = await _state(sessionmaker, ids)
    for iid in ids[:5]:
        assert state[iid] == (v2["id"], "finance", ["finance"])
    for iid in ids[5:]:
        assert state[iid] == (v2["id"], "manager", ["manager"])
    assert await _logs(sessionmaker, batch["id"]) == {i: "version 1 → version 2" for i in ids}

    again = await create(admin, _migrate(ids[:3]))
    done = await wait_for(admin, again["id"])
    assert (done["success"], done["failed"], done["ignored"]) == (0, 0, 3)
    assert {d["error"] for d in await details(admin, again["id"])} == {
        f"Process {i} is already on version 2." for i in ids[:3]
    }
    assert await _logs(sessionmaker, again["id"]) == {}


async def test_mapping_renames_steps_and_unmapped_missing_steps_fail(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 12)
    ids = await _instances(sessionmaker, setup.task_ids)
    await _to_finance(alice, ids[:2])
    v2 = await create_definition(admin, _renamed(alice.id, bob.id))

    # Without a mapping only the instances at ``finance`` can move.
    unmapped = await create(admin, _migrate(ids))
    done = await wait_for(admin, unmapped["id"])
    assert (done["success"], done["failed"], done["ignored"]) == (2, 10, 0)
    assert {
        d["item_id"]: d["error"] for d in await details(admin, unmapped["id"], status="failed")
    } == {
        i: f"Step manager of process {i} does not exist in version 2; map it in node_mapping."
        for i in ids[2:]
    }
    state = await _state(sessionmaker, ids)
    assert all(state[i] == (v2["id"], "finance", ["finance"]) for i in ids[:2])
    assert all(state[i] == (setup.definition["id"], "manager", ["manager"]) for i in ids[2:])

    mapped = await create(admin, _migrate(ids, node_mapping={"manager": "lead"}))
    done = await wait_for(admin, mapped["id"])
    assert (done["success"], done["failed"], done["ignored"]) == (10, 0, 2)
    state = await _state(sessionmaker, ids)
    assert all(state[i] == (v2["id"], "finance", ["finance"]) for i in ids[:2])
    assert all(state[i] == (v2["id"], "lead", ["lead"]) for i in ids[2:])
    assert await _logs(sessionmaker, mapped["id"]) == {i: "version 1 → version 2" for i in ids[2:]}
    async with sessionmaker() as s:  # assignees stay; completed tasks keep their node
        assignees = set(await s.scalars(select(Task.assignee_id).where(Task.node_id == "lead")))
        done_nodes = set(await s.scalars(select(Task.node_id).where(Task.status == "completed")))
    assert assignees == {alice.id} and done_nodes == {"manager"}

    # The migrated instances go on in version 2: the renamed step approves as before.
    r = await alice.get("/api/v1/tasks", params={"status": "pending", "node_id": "lead"})
    task = r.json()["items"][0]
    r = await approve(alice, task["id"], form_data={"category": "meals"})
    assert r.status_code == 200, r.text
    assert (await _state(sessionmaker, [task["instance_id"]]))[task["instance_id"]][1] == "finance"


async def test_a_pending_task_at_a_missing_step_blocks_the_instance(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """The current step maps, but a pending task waits at a step version 2 lacks."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    ids = await _instances(sessionmaker, setup.task_ids)
    await create_definition(admin, _renamed(alice.id, bob.id))
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == ids[0])
            .values(current_node_id="finance")
        )
        await s.commit()
    batch = await create(admin, _migrate(ids[:1]))
    done = await wait_for(admin, batch["id"])
    assert (done["success"], done["failed"]) == (0, 1)
    [item] = await details(admin, batch["id"])
    assert item["error"] == (
        f"Step manager of process {ids[0]} does not exist in version 2; map it in node_mapping."
    )


async def test_other_definitions_and_ended_instances_fail(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    ids = await _instances(sessionmaker, setup.task_ids)
    await create_definition(admin, expense_definition(alice.id, bob.id, key="leave"))
    leave = await start_instance(alice, "leave", "Holiday")
    await create_definition(admin, expense_definition(alice.id, bob.id))
    ended = {ids[0]: "terminated", ids[1]: "completed", ids[2]: "rejected"}
    async with sessionmaker() as s:
        for iid, status in ended.items():
            await s.execute(
                update(ProcessInstance).where(ProcessInstance.id == iid).values(status=status)
            )
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id == ids[3]).values(status="suspended")
        )
        await s.commit()

    batch = await create(admin, _migrate([*ids, leave["id"], 999_999]))
    done = await wait_for(admin, batch["id"])
    assert (done["success"], done["failed"], done["ignored"]) == (3, 5, 0)
    errors = {d["item_id"]: d["error"] for d in await details(admin, batch["id"], status="failed")}
    assert errors == {
        **{
            iid: f"Process {iid} is {status}; only active or suspended processes can be migrated."
            for iid, status in ended.items()
        },
        leave["id"]: f"Process {leave['id']} is a process of leave, not expense.",
        999_999: "Process 999999 does not exist.",
    }
    async with sessionmaker() as s:
        v2 = await s.scalar(
            select(ProcessDefinition.id).where(
                ProcessDefinition.key == "expense", ProcessDefinition.version == 2
            )
        )
    state = await _state(sessionmaker, [*ids, leave["id"]])
    assert {i for i, (d, _, _) in state.items() if d == v2} == set(ids[3:])
    assert set(await _logs(sessionmaker, batch["id"])) == set(ids[3:])


async def test_monitor_grant_decides_per_item(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    ids = await _instances(sessionmaker, setup.task_ids)
    v2 = await create_definition(admin, expense_definition(alice.id, bob.id))
    # alice holds a task in each instance (she sees them) but no grant
    denied = await create(alice, _migrate(ids))
    done = await wait_for(alice, denied["id"])
    assert (done["success"], done["failed"]) == (0, 4)
    assert {d["error"] for d in await details(alice, denied["id"])} == {
        "You may not migrate processes of expense."
    }
    assert {d for d, _, _ in (await _state(sessionmaker, ids)).values()} == {setup.definition["id"]}

    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 201, r.text
    allowed = await create(alice, _migrate(ids))
    done = await wait_for(alice, allowed["id"])
    assert (done["success"], done["failed"]) == (4, 0)
    assert {d for d, _, _ in (await _state(sessionmaker, ids)).values()} == {v2["id"]}


async def test_params_are_checked_before_anything_is_written(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    ids = await _instances(sessionmaker, setup.task_ids)
    await create_definition(admin, _renamed(alice.id, bob.id))

    async def refused(body: dict[str, Any]) -> dict[str, Any]:
        r = await admin.post("/api/v1/batches", json=body)
        assert r.status_code == 422, r.text
        out: dict[str, Any] = r.json()
        assert all(f["loc"][0] == "params" for f in out["fields"]), out
        return out

    out = await refused(_migrate(ids, version=7))
    assert out["detail"] == "Definition expense has no version 7."
    assert out["fields"][0]["loc"] == ["params", "target_version"]
    out = await refused(
        {**_migrate(ids), "params": {"definition_key": "nope", "target_version": 1}}
    )
    assert out["detail"] == "Definition nope has no version 1."

    out = await refused(_migrate(ids, node_mapping={"manager": "boss"}))
    assert out["fields"][0]["loc"] == ["params", "node_mapping", "manager"]
    assert "boss" in out["detail"]
    out = await refused(_migrate(ids, node_mapping={"ghost": "lead"}))
    assert out["fields"][0]["loc"] == ["params", "node_mapping", "ghost"]

    out = await refused(_migrate(ids, extra=1))
    assert out["fields"][0]["loc"] == ["params", "extra"]
    out = await refused({**_migrate(ids), "params": {"definition_key": "expense"}})
    assert out["fields"][0]["loc"] == ["params", "target_version"]
    out = await refused(_migrate(ids, version=0))
    assert out["fields"][0]["loc"] == ["params", "target_version"]
    out = await refused(_migrate(ids, version=2**40))
    assert out["fields"][0]["loc"] == ["params", "target_version"]
    out = await refused(_migrate(ids, node_mapping={f"n{i}": "lead" for i in range(201)}))
    assert out["fields"][0]["loc"] == ["params", "node_mapping"]
    out = await refused(_migrate(ids, node_mapping={"manager": "x" * 101}))
    assert out["fields"][0]["loc"][:2] == ["params", "node_mapping"]

    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0

    # a key needs only be a node of some version: ``manager`` is one of version 1 only
    ok = await create(admin, _migrate(ids, node_mapping={"manager": "lead"}))
    assert (await wait_for(admin, ok["id"]))["success"] == 2


async def test_a_chunk_costs_the_same_few_statements_at_any_size(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Set-based: the statements a chunk runs do not grow with its size."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 60)
    ids = await _instances(sessionmaker, setup.task_ids)
    await _to_finance(alice, ids[:3])
    await create_definition(admin, _renamed(alice.id, bob.id))
    op = get_operation("instance.migrate")
    params = op.validate_params(
        {"definition_key": "expense", "target_version": 2, "node_mapping": {"manager": "lead"}}
    )
    run = BatchRun(batch_id=0, creator_id=admin.id, params=params)

    async def statements(chunk: list[int]) -> int:
        return await statements_of_chunk(sessionmaker, op, run, chunk)

    small = await statements([ids[0], ids[3]])  # one at finance, one at manager
    large = await statements([ids[1], ids[2], *ids[4:]])
    # operator, creator, instances (locked), definitions, pending tasks (locked),
    # UPDATE instances, UPDATE tasks, INSERT logs
    assert small == large == 8
    state = await _state(sessionmaker, ids)
    assert all(state[i][1:] == ("finance", ["finance"]) for i in ids[:3])
    assert all(state[i][1:] == ("lead", ["lead"]) for i in ids[3:])
