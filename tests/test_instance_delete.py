"""instance.delete (snapshot, then delete instance, tasks and logs) and
instance.archive_delete (purge those snapshots): counts, rows, permissions, locks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, BatchDetail, InstanceArchive, ProcessInstance, ProcessLog, Task
from app.operations import BatchRun, get_operation
from tests.batch_helpers import create, details, expense_setup, statements_of_chunk, wait_for
from tests.conftest import Actor
from tests.factories import approve, bulk_tasks, create_definition, expense_definition

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def _instance_ids(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


async def _leave_instances(
    sm: async_sessionmaker[AsyncSession], admin: Actor, assignee: Actor, n: int
) -> list[int]:
    """``n`` instances of a second definition, ``leave``."""
    definition = await create_definition(
        admin, expense_definition(assignee.id, assignee.id, key="leave", name="Leave")
    )
    task_ids = await bulk_tasks(
        sm,
        definition_id=definition["id"],
        definition_key="leave",
        node_id="manager",
        assignee_id=assignee.id,
        initiator_id=admin.id,
        n=n,
    )
    return await _instance_ids(sm, task_ids)


def _iso(row: Any, table: Table) -> dict[str, Any]:
    return {
        c.name: (v.isoformat() if isinstance(v := getattr(row, c.key), datetime) else v)
        for c in table.columns
    }


async def _snapshots(sm: async_sessionmaker[AsyncSession], ids: list[int]) -> dict[int, Any]:
    """What each instance's archive must hold, read before it is deleted."""
    out: dict[int, Any] = {}
    async with sm() as s:
        for iid in ids:
            instance = await s.get(ProcessInstance, iid)
            assert instance is not None
            tasks = await s.scalars(select(Task).where(Task.instance_id == iid).order_by(Task.id))
            logs = await s.scalars(
                select(ProcessLog).where(ProcessLog.instance_id == iid).order_by(ProcessLog.id)
            )
            out[iid] = {
                "instance": _iso(instance, cast(Table, ProcessInstance.__table__)),
                "tasks": [_iso(t, cast(Table, Task.__table__)) for t in tasks],
                "logs": [_iso(g, cast(Table, ProcessLog.__table__)) for g in logs],
            }
    return out


async def _remaining(sm: async_sessionmaker[AsyncSession], ids: list[int]) -> dict[str, int]:
    """How many rows of these instances are left in each table."""
    async with sm() as s:
        return {
            "instances": await s.scalar(select(func.count()).where(ProcessInstance.id.in_(ids)))
            or 0,
            "tasks": await s.scalar(select(func.count()).where(Task.instance_id.in_(ids))) or 0,
            "logs": await s.scalar(select(func.count()).where(ProcessLog.instance_id.in_(ids)))
            or 0,
        }


async def _archives(sm: async_sessionmaker[AsyncSession]) -> dict[int, list[InstanceArchive]]:
    async with sm() as s:
        rows = list(await s.scalars(select(InstanceArchive).order_by(InstanceArchive.id)))
    out: dict[int, list[InstanceArchive]] = {}
    for row in rows:
        out.setdefault(row.instance_id, []).append(row)
    return out


def _counts(batch: dict[str, Any]) -> tuple[str, int, int, int, int]:
    return batch["status"], batch["total"], batch["success"], batch["failed"], batch["ignored"]


async def test_admin_deletes_by_ids_and_by_filter_keeping_full_snapshots(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    expense = await _instance_ids(sessionmaker, setup.task_ids)
    leave = await _leave_instances(sessionmaker, admin, alice, 2)
    # history worth archiving: an approval (second task + logs), a suspension, an end state
    r = await approve(alice, setup.task_ids[0], form_data={"category": "travel"})
    assert r.status_code == 200, r.text
    done = await wait_for(
        admin, (await create(admin, {"type": "instance.suspend", "ids": expense[1:2]}))["id"]
    )
    assert done["success"] == 1
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == expense[2])
            .values(status="completed", current_node_id=None)
        )
        await s.commit()
    before = await _snapshots(sessionmaker, expense)
    assert len(before[expense[0]]["tasks"]) == 2 and before[expense[0]]["logs"]
    assert before[expense[1]]["logs"]

    batch = await create(
        admin,
        {
            "type": "instance.delete",
            "ids": expense[:3],
            "params": {"reason": "GDPR"},
            "chunk_size": 2,
        },
    )
    done = await wait_for(admin, batch["id"])
    assert _counts(done) == ("completed", 3, 3, 0, 0)
    assert await _remaining(sessionmaker, expense[:3]) == {"instances": 0, "tasks": 0, "logs": 0}
    assert await _remaining(sessionmaker, expense[3:]) == {"instances": 3, "tasks": 3, "logs": 0}
    archives = await _archives(sessionmaker)
    assert sorted(archives) == expense[:3]
    for iid in expense[:3]:
        (archive,) = archives[iid]
        assert (archive.definition_key, archive.deleted_by, archive.batch_id) == (
            "expense",
            admin.id,
            batch["id"],
        )
        assert archive.snapshot == {**before[iid], "reason": "GDPR"}
        r = await admin.get(f"/api/v1/archives/{iid}")
        assert r.status_code == 200, r.text
        assert r.json()["snapshot"] == {**before[iid], "reason": "GDPR"}
    assert archives[expense[2]][0].snapshot["instance"]["status"] == "completed"
    assert archives[expense[1]][0].snapshot["instance"]["status"] == "suspended"

    by_filter = await create(
        admin, {"type": "instance.delete", "filter": {"definition_key": "expense"}}
    )
    assert by_filter["total"] == 3
    done = await wait_for(admin, by_filter["id"])
    assert _counts(done) == ("completed", 3, 3, 0, 0)
    assert await _remaining(sessionmaker, expense) == {"instances": 0, "tasks": 0, "logs": 0}
    assert await _remaining(sessionmaker, leave) == {"instances": 2, "tasks": 2, "logs": 0}
    archives = await _archives(sessionmaker)
    assert sorted(archives) == expense
    for iid in expense[3:]:
        (archive,) = archives[iid]
        assert archive.batch_id == by_filter["id"]
        assert archive.snapshot == {**before[iid], "reason": None}

    # deleting again: the instances are gone, like any missing one
    again = await create(admin, {"type": "instance.delete", "ids": expense[:2]})
    done = await wait_for(admin, again["id"])
    assert _counts(done) == ("completed", 2, 0, 2, 0)
    assert {d["error"] for d in await details(admin, again["id"])} == {
        f"Process {i} does not exist." for i in expense[:2]
    }
    assert len(await _archives(sessionmaker)) == 6


async def test_delete_permission_is_decided_per_item(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    expense = await _instance_ids(sessionmaker, setup.task_ids)
    leave = await _leave_instances(sessionmaker, admin, admin, 2)
    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "leave"})
    assert r.status_code == 201, r.text

    # alice holds a task in each expense instance (sees them, no grant); leave: granted
    batch = await create(alice, {"type": "instance.delete", "ids": [*expense, *leave, 999_999]})
    done = await wait_for(alice, batch["id"])
    assert _counts(done) == ("completed", 6, 2, 4, 0)
    errors = {d["item_id"]: d["error"] for d in await details(alice, batch["id"])}
    assert errors == {
        **{i: "You may not delete processes of expense." for i in expense},
        **{i: None for i in leave},
        999_999: "Process 999999 does not exist.",
    }
    # bob sees no expense instance: each fails like a missing one
    hidden = await create(bob, {"type": "instance.delete", "ids": expense})
    done = await wait_for(bob, hidden["id"])
    assert _counts(done) == ("completed", 3, 0, 3, 0)
    assert {d["error"] for d in await details(bob, hidden["id"])} == {
        f"Process {i} does not exist." for i in expense
    }

    assert await _remaining(sessionmaker, expense) == {"instances": 3, "tasks": 3, "logs": 0}
    assert await _remaining(sessionmaker, leave) == {"instances": 0, "tasks": 0, "logs": 0}
    archives = await _archives(sessionmaker)
    assert sorted(archives) == leave
    assert {a.deleted_by for rows in archives.values() for a in rows} == {alice.id}


async def test_a_task_locked_by_an_approve_batch_goes_with_its_instance(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    instances = await _instance_ids(sessionmaker, setup.task_ids)
    approval = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "start_suspended": True},
    )
    assert approval["status"] == "suspended"
    async with sessionmaker() as s:
        locked = await s.scalar(
            select(func.count()).where(Task.locked_by_batch_id == approval["id"])
        )
    assert locked == 4

    deleted = await create(admin, {"type": "instance.delete", "ids": instances[:2]})
    done = await wait_for(admin, deleted["id"])
    assert _counts(done) == ("completed", 2, 2, 0, 0)
    archives = await _archives(sessionmaker)
    assert [
        t["locked_by_batch_id"] for i in instances[:2] for t in archives[i][0].snapshot["tasks"]
    ] == [approval["id"]] * 2

    r = await alice.post(f"/api/v1/batches/{approval['id']}/activate")
    assert r.status_code == 200, r.text
    done = await wait_for(alice, approval["id"])
    assert _counts(done) == ("completed", 4, 2, 2, 0)
    errors = {d["item_id"]: d["error"] for d in await details(alice, approval["id"])}
    assert errors == {
        setup.task_ids[0]: f"Task {setup.task_ids[0]} does not exist.",
        setup.task_ids[1]: f"Task {setup.task_ids[1]} does not exist.",
        setup.task_ids[2]: None,
        setup.task_ids[3]: None,
    }
    assert await _remaining(sessionmaker, instances[:2]) == {"instances": 0, "tasks": 0, "logs": 0}
    async with sessionmaker() as s:
        statuses = list(
            await s.scalars(
                select(Task.status).where(Task.id.in_(setup.task_ids[2:])).order_by(Task.id)
            )
        )
        still_locked = await s.scalar(
            select(func.count()).where(Task.locked_by_batch_id == approval["id"])
        )
    assert statuses == ["completed", "completed"] and still_locked == 0


async def test_archive_delete_is_an_admins_act(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    expense = await _instance_ids(sessionmaker, setup.task_ids)
    leave = await _leave_instances(sessionmaker, admin, admin, 2)
    done = await wait_for(
        admin,
        (await create(admin, {"type": "instance.delete", "ids": [*expense, *leave]}))["id"],
    )
    assert done["success"] == 7
    assert sorted(await _archives(sessionmaker)) == sorted([*expense, *leave])

    # admin by ids: an id never archived fails
    batch = await create(
        admin, {"type": "instance.archive_delete", "ids": [expense[0], expense[1], 999_999]}
    )
    done = await wait_for(admin, batch["id"])
    assert _counts(done) == ("completed", 3, 2, 1, 0)
    failed = await details(admin, batch["id"], status="failed")
    assert [(d["item_id"], d["error"]) for d in failed] == [
        (999_999, "Process 999999 has no archive.")
    ]
    for iid in expense[:2]:
        assert (await admin.get(f"/api/v1/archives/{iid}")).status_code == 404
    assert sorted(await _archives(sessionmaker)) == sorted([*expense[2:], *leave])

    # Purging archives is an admin's act, like reading them: alice, even with a monitor
    # grant on expense (she may delete its instances), gets a 403 for ids, a filter and a
    # dry run alike, before anything is written — and learns nothing about which ids exist.
    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 201, r.text
    for body in (
        {"type": "instance.archive_delete", "ids": expense[2:4]},
        {"type": "instance.archive_delete", "filter": {}},
        {"type": "instance.archive_delete", "ids": [expense[2], 999_999], "dry_run": True},
    ):
        r = await alice.post("/api/v1/batches", json=body)
        assert r.status_code == 403, r.text
        assert r.json() == {
            "error": "Forbidden",
            "detail": "Only an admin may run instance.archive_delete batches.",
        }
    assert (await alice.get("/api/v1/batches")).json()["total"] == 0
    assert sorted(await _archives(sessionmaker)) == sorted([*expense[2:], *leave])

    by_ids = await create(admin, {"type": "instance.archive_delete", "ids": expense[2:]})
    done = await wait_for(admin, by_ids["id"])
    assert _counts(done) == ("completed", 3, 3, 0, 0)
    assert sorted(await _archives(sessionmaker)) == leave

    # admin by filter
    by_key = await create(
        admin, {"type": "instance.archive_delete", "filter": {"definition_key": "leave"}}
    )
    assert by_key["total"] == 2
    done = await wait_for(admin, by_key["id"])
    assert _counts(done) == ("completed", 2, 2, 0, 0)
    assert await _archives(sessionmaker) == {}
    assert (await admin.get(f"/api/v1/archives/{leave[0]}")).status_code == 404


async def test_archive_delete_counts_an_id_listed_twice_once(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Several snapshots of one id are purged together; a repeated detail is ignored."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    instances = await _instance_ids(sessionmaker, setup.task_ids)
    done = await wait_for(
        admin, (await create(admin, {"type": "instance.delete", "ids": instances}))["id"]
    )
    assert done["success"] == 3
    async with sessionmaker() as s:  # a second snapshot of the same id (an older one)
        s.add(
            InstanceArchive(
                instance_id=instances[1], definition_key="expense", snapshot={}, deleted_by=None
            )
        )
        await s.commit()
    batch = await create(
        admin, {"type": "instance.archive_delete", "ids": instances, "start_suspended": True}
    )
    async with sessionmaker() as s:
        s.add(BatchDetail(batch_id=batch["id"], item_id=instances[1], status="pending"))
        await s.execute(update(Batch).where(Batch.id == batch["id"]).values(total=4))
        await s.commit()
    assert (await admin.post(f"/api/v1/batches/{batch['id']}/activate")).status_code == 200
    done = await wait_for(admin, batch["id"])
    assert _counts(done) == ("completed", 4, 3, 0, 1)
    ignored = await details(admin, batch["id"], status="ignored")
    assert [(d["item_id"], d["error"]) for d in ignored] == [
        (instances[1], f"Process {instances[1]} is listed twice.")
    ]
    assert await _archives(sessionmaker) == {}


async def test_params_and_filters_are_validated(admin: Actor, alice: Actor) -> None:
    cases: list[tuple[Actor, dict[str, Any], str]] = [
        (alice, {"type": "instance.delete", "ids": [1], "params": {"x": 1}}, "params"),
        (
            alice,
            {"type": "instance.delete", "ids": [1], "params": {"reason": "x" * 2001}},
            "params",
        ),
        (
            admin,
            {"type": "instance.archive_delete", "ids": [1], "params": {"reason": "x"}},
            "params",
        ),
        (admin, {"type": "instance.archive_delete", "filter": {"status": "active"}}, "filter"),
        (
            admin,
            {"type": "instance.archive_delete", "filter": {"definition_key": "k" * 101}},
            "filter",
        ),
    ]
    for actor, body, part in cases:
        r = await actor.post("/api/v1/batches", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["fields"][0]["loc"][0] == part, r.text
    r = await admin.get("/api/v1/batches")
    assert r.json()["total"] == 0


async def test_a_chunk_costs_the_same_few_statements_at_any_size(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Set-based: the statements a chunk runs do not grow with its size."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 40)
    ids = await _instance_ids(sessionmaker, setup.task_ids)
    done = await wait_for(
        admin, (await create(admin, {"type": "instance.suspend", "ids": ids}))["id"]
    )
    assert done["success"] == 40  # every instance now has a log row to archive

    async def statements(op_type: str, chunk: list[int]) -> int:
        op = get_operation(op_type)
        run = BatchRun(batch_id=0, creator_id=admin.id, params=op.validate_params({}))
        return await statements_of_chunk(sessionmaker, op, run, chunk)

    # operator, creator, instances (locked), tasks, logs, INSERT archives, 3 DELETEs
    assert await statements("instance.delete", ids[:2]) == 9
    assert await statements("instance.delete", ids[2:]) == 9
    assert await _remaining(sessionmaker, ids) == {"instances": 0, "tasks": 0, "logs": 0}
    # operator, archives (locked), DELETE archives
    assert await statements("instance.archive_delete", ids[:2]) == 3
    assert await statements("instance.archive_delete", ids[2:]) == 3
    assert await _archives(sessionmaker) == {}
