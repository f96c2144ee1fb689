"""Operator controls: dry run, scheduled start, per-batch rate limit,
results export — through the HTTP API, on both backends."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from openpyxl import load_workbook
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches.recovery import start_due
from app.domain import Wakeup
from app.models import ActionLog, Batch, BatchDetail, ProcessInstance, ProcessLog, Task
from tests.batch_helpers import (
    clock_passes,
    create,
    details,
    eventually,
    expense_setup,
    get_batch,
    idle,
    wait_for,
)
from tests.conftest import Actor
from tests.factories import approve

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}
TABLES = (Batch, BatchDetail, ProcessLog, ActionLog)


async def _snapshot(sm: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Row counts of everything a batch could write, plus the task and instance states."""
    async with sm() as s:
        counts = {
            t.__tablename__: await s.scalar(select(func.count()).select_from(t)) for t in TABLES
        }
        tasks = (await s.execute(select(Task.id, Task.status, Task.locked_by_batch_id))).all()
        instances = (await s.execute(select(ProcessInstance.id, ProcessInstance.status))).all()
    return {**counts, "tasks": sorted(tasks), "instances": sorted(instances)}


async def _instances(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> list[int]:
    async with sm() as s:
        return list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids)).order_by(Task.id))
        )


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# --------------------------------------------------------------------------- dry run


async def test_dry_run_predicts_a_mixed_id_list_and_writes_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 8)
    ids = setup.task_ids
    bobs = (await expense_setup(sessionmaker, admin, bob, alice, 1)).task_ids
    assert (await approve(alice, ids[0], form_data={"category": "meals"})).status_code == 200
    held = await create(
        alice, {"type": "task.approve", "ids": [ids[1]], "params": APPROVE, "start_suspended": True}
    )
    async with sessionmaker() as s:  # ids[2]'s process is suspended
        instance = await s.scalar(select(Task.instance_id).where(Task.id == ids[2]))
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id == instance).values(status="suspended")
        )
        await s.commit()
    before = await _snapshot(sessionmaker)
    body = {"type": "task.approve", "ids": [*ids, *bobs, 999_999], "params": APPROVE}
    r = await alice.post("/api/v1/batches", json={**body, "dry_run": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["dry_run"], out["type"], out["total"]) == (True, "task.approve", 10)
    assert (out["success"], out["failed"], out["ignored"]) == (5, 4, 1)
    assert {p["item_id"]: (p["status"], p["error"]) for p in out["problems"]} == {
        ids[0]: ("ignored", f"Task {ids[0]} is already completed."),
        ids[1]: ("failed", f"Task {ids[1]} is locked by batch {held['id']}."),
        ids[2]: ("failed", f"The process of task {ids[2]} is suspended, not active."),
        bobs[0]: ("failed", f"Task {bobs[0]} does not exist."),
        999_999: ("failed", "Task 999999 does not exist."),
    }
    assert await _snapshot(sessionmaker) == before
    # the real batch does what was predicted
    real = await wait_for(alice, (await create(alice, body))["id"])
    assert (real["success"], real["failed"], real["ignored"]) == (5, 4, 1)


async def test_dry_run_checks_form_rules_and_instance_filters(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    before = await _snapshot(sessionmaker)
    r = await alice.post(
        "/api/v1/batches",
        json={
            "type": "task.approve",
            "filter": {"definition_key": "expense"},
            "params": {"decision": "approve", "form_data": {"category": "cars"}},
            "dry_run": True,
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["total"], out["failed"]) == (5, 5)
    assert {p["error"] for p in out["problems"]} == {"Category must be one of travel, meals, other"}
    instances = await _instances(sessionmaker, setup.task_ids)
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id.in_(instances[:2]))
            .values(status="terminated")
        )
        await s.commit()
    before = await _snapshot(sessionmaker)
    r = await admin.post(
        "/api/v1/batches",
        json={
            "type": "instance.terminate",
            "filter": {"definition_key": "expense"},
            "dry_run": True,
        },
    )
    out = r.json()
    assert (out["total"], out["success"], out["ignored"], out["failed"]) == (5, 3, 2, 0)
    assert await _snapshot(sessionmaker) == before
    # a bad request is still a 422, before anything
    r = await admin.post(
        "/api/v1/batches", json={"type": "instance.migrate", "ids": [1], "dry_run": True}
    )
    assert r.status_code == 422


# --------------------------------------------------------------------------- schedule


async def test_a_scheduled_batch_starts_at_its_time_and_resolves_its_filter_then(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 4)
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "filter": {"definition_key": "expense", "node_id": "manager"},
            "params": APPROVE,
            "start_at": _in(1.5),
        },
    )
    assert batch["status"] == "scheduled" and batch["start_at"]
    later = await expense_setup(sessionmaker, admin, alice, bob, 3)  # made before the start
    seen = (await alice.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (seen["status"], seen["success"]) == ("scheduled", 0)
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).where(Task.status == "completed")) == 0
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["total"], done["success"]) == ("completed", 7, 7)
    assert done["started_at"] >= batch["start_at"]
    async with sessionmaker() as s:
        approved = await s.scalar(
            select(func.count()).where(Task.id.in_(later.task_ids), Task.status == "completed")
        )
    assert approved == 3


async def test_start_at_is_validated(alice: Actor) -> None:
    body = {"type": "task.approve", "ids": [1], "params": APPROVE}
    for start_at in (
        _in(-60),
        _in(31 * 86400),
        datetime.now(UTC).replace(tzinfo=None).isoformat(),  # no offset
        "tomorrow",
    ):
        r = await alice.post("/api/v1/batches", json={**body, "start_at": start_at})
        assert r.status_code == 422, (start_at, r.text)
        assert r.json()["error"] == "ValidationError"


async def test_a_scheduled_batch_can_be_cancelled_suspended_and_activated(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    ids = setup.task_ids
    gone = await create(
        alice,
        {"type": "task.approve", "ids": ids[:2], "params": APPROVE, "start_at": _in(3600)},
    )
    async with sessionmaker() as s:  # an id list is resolved and locked at creation
        locks = set(await s.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(ids[:2]))))
    assert locks == {gone["id"]}
    r = await alice.delete(f"/api/v1/batches/{gone['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["cancelled"] == 2
    async with sessionmaker() as s:
        locks = set(await s.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(ids[:2]))))
        pending = await s.scalar(select(func.count()).where(Task.status == "pending"))
    assert locks == {None} and pending == 4

    soon = await create(
        alice, {"type": "task.approve", "ids": ids[2:], "params": APPROVE, "start_at": _in(1.5)}
    )
    r = await alice.post(f"/api/v1/batches/{soon['id']}/suspend")
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    r = await alice.post(f"/api/v1/batches/{soon['id']}/activate")
    assert r.status_code == 200 and r.json()["status"] == "scheduled"  # its time has not come
    r = await alice.post(f"/api/v1/batches/{soon['id']}/suspend")
    assert r.json()["status"] == "suspended"
    # start_at passes while it is suspended: a schedule pass then must not start it.
    await clock_passes(soon["start_at"])
    await start_due(app.state.jobs)  # the schedule cron's pass, run here to be sure of it
    await idle(app)
    assert (await alice.get(f"/api/v1/batches/{soon['id']}")).json()["status"] == "suspended"
    r = await alice.post(f"/api/v1/batches/{soon['id']}/activate")
    assert r.status_code == 200 and r.json()["status"] == "running"
    done = await wait_for(alice, soon["id"])
    assert (done["status"], done["success"]) == ("completed", 2)


# --------------------------------------------------------------------------- rate limit


async def test_the_rate_limit_sets_a_floor_on_the_span_and_pauses_with_suspend(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """60 instances at 40 items/s: chunks of 8 (0.2 s of budget) reserved one after
    another, so the last can start no sooner than (60 - 8) / 40 = 1.3 s after the first."""
    await expense_setup(sessionmaker, admin, alice, bob, 60)
    batch = await create(
        admin,
        {
            "type": "instance.suspend",
            "filter": {"definition_key": "expense"},
            "max_items_per_second": 40,
        },
    )
    assert batch["max_items_per_second"] == 40
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"]) == ("completed", 60)
    span = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    assert span >= timedelta(seconds=(60 - 8) / 40)
    async with sessionmaker() as s:
        sizes = (
            await s.execute(
                select(func.count())
                .select_from(ProcessLog)
                .where(ProcessLog.batch_id == batch["id"])
                .group_by(ProcessLog.created_at)
            )
        ).scalars()
        assert max(sizes) <= 8  # one log timestamp per chunk: chunks shrank to the budget


async def test_suspend_freezes_a_rate_limited_batch_and_activate_resumes_it(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 40)
    batch = await create(
        admin,
        {
            "type": "instance.suspend",
            "filter": {"definition_key": "expense"},
            "max_items_per_second": 10,
        },
    )
    await eventually(
        lambda: get_batch(admin, batch["id"]),
        "two items applied",
        until=lambda seen: seen["success"] >= 2,
    )
    r = await admin.post(f"/api/v1/batches/{batch['id']}/suspend")
    assert r.status_code == 200, r.text
    await idle(app)  # a chunk already claimed may still commit
    frozen = (await get_batch(admin, batch["id"]))["success"]
    # A wake-up that arrives now (a deferred one falling due, a stray one) changes nothing.
    await app.state.queue.enqueue(Wakeup("execute", batch["id"]))
    await idle(app)
    assert (await get_batch(admin, batch["id"]))["success"] == frozen < 40
    assert (await admin.post(f"/api/v1/batches/{batch['id']}/activate")).status_code == 200
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"]) == ("completed", 40)


async def test_max_items_per_second_is_validated(admin: Actor) -> None:
    for rate in (0, -1, "fast", 10**7):
        r = await admin.post(
            "/api/v1/batches",
            json={"type": "instance.suspend", "ids": [1], "max_items_per_second": rate},
        )
        assert r.status_code == 422, (rate, r.text)


# --------------------------------------------------------------------------- results


async def test_results_export_csv_and_xlsx(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    ids = setup.task_ids
    instances = await _instances(sessionmaker, ids)
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instances[0])
            .values(title='=HYPERLINK("http://evil")')
        )
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instances[1])
            .values(status="suspended")
        )
        await s.commit()
    batch = await create(alice, {"type": "task.approve", "ids": [*ids, 999_999], "params": APPROVE})
    await wait_for(alice, batch["id"])
    url = f"/api/v1/batches/{batch['id']}/results"

    r = await alice.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert f"batch-{batch['id']}-results.csv" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "item_id",
        "row",
        "status",
        "error",
        "error_code",
        "retryable",
        "retry_count",
        "finished_at",
        "title",
    ]
    by_item = {int(row[0]): row for row in rows[1:]}
    assert len(by_item) == 7
    assert by_item[ids[0]][2:6] == ["success", "", "", ""]  # no code unless failed
    assert by_item[ids[0]][8] == '\'=HYPERLINK("http://evil")'
    assert by_item[ids[1]][2:6] == [
        "failed",
        f"The process of task {ids[1]} is suspended, not active.",
        "wrong_state",
        "false",
    ]
    assert by_item[ids[2]][8] == "Trip 3"
    assert by_item[999_999][2:6] == ["failed", "Task 999999 does not exist.", "not_found", "false"]
    assert by_item[999_999][8] == ""

    r = await alice.get(url, params={"status": "failed"})
    assert [int(row[0]) for row in list(csv.reader(io.StringIO(r.text)))[1:]] == [ids[1], 999_999]

    r = await alice.get(url, params={"format": "xlsx"})
    assert r.status_code == 200
    sheet = load_workbook(io.BytesIO(r.content), read_only=True).active
    assert sheet is not None
    cells = list(sheet.iter_rows(values_only=True))
    assert cells[0] == (*rows[0][:7], "finished_at (UTC)", "title")
    assert len(cells) == 8
    assert all(isinstance(c[7], datetime) for c in cells[1:])  # a real date-time cell
    assert by_item[ids[0]][7].endswith("Z")  # the CSV keeps ISO 8601 in UTC
    first = next(c for c in cells[1:] if c[0] == ids[0])
    assert first[3:6] == (None, None, None)
    assert first[8] == '=HYPERLINK("http://evil")'  # kept as text, not a formula
    missing = next(c for c in cells[1:] if c[0] == 999_999)
    assert missing[4:6] == ("not_found", False)  # a real boolean cell
    raw = load_workbook(io.BytesIO(r.content)).active  # not read-only: data types visible
    assert raw is not None
    title_cells = [row[8] for row in raw.iter_rows(min_row=2)]
    assert all(c.data_type != "f" for c in title_cells)

    # another user's batch is not found; a bad format or status is a 422
    assert (await bob.get(url)).status_code == 404
    assert (await alice.get(url, params={"format": "pdf"})).status_code == 422
    assert (await alice.get(url, params={"status": "odd"})).status_code == 422
    empty = await alice.get(url, params={"status": "cancelled"})
    assert empty.text.strip().splitlines() == [",".join(rows[0])]
    assert await details(alice, batch["id"])  # the batch itself is untouched


async def test_results_never_show_the_title_of_an_item_the_creator_cannot_see(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    mine = (await expense_setup(sessionmaker, admin, alice, bob, 1)).task_ids
    bobs = (await expense_setup(sessionmaker, admin, bob, alice, 1)).task_ids
    batch = await create(alice, {"type": "task.approve", "ids": [*mine, *bobs], "params": APPROVE})
    await wait_for(alice, batch["id"])
    r = await alice.get(f"/api/v1/batches/{batch['id']}/results")
    rows = {int(row[0]): row for row in list(csv.reader(io.StringIO(r.text)))[1:]}
    assert rows[mine[0]][8] == "Trip 1"
    assert rows[bobs[0]][3:] == [
        f"Task {bobs[0]} does not exist.",
        "not_found",
        "false",
        "0",
        rows[bobs[0]][7],
        "",
    ]
    suspend = await create(alice, {"type": "instance.suspend", "ids": [1, 2, 999]})
    await wait_for(alice, suspend["id"])
    r = await alice.get(f"/api/v1/batches/{suspend['id']}/results")
    titles = {int(row[0]): row[8] for row in list(csv.reader(io.StringIO(r.text)))[1:]}
    assert titles == {1: "Trip 1", 2: "", 999: ""}  # 2 is bob's process: hidden from alice


async def test_dry_runs_of_archive_delete_and_migrate_write_and_lock_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    from app.models import InstanceArchive

    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    async with sessionmaker() as s:
        s.add(InstanceArchive(instance_id=777, definition_key="expense", snapshot={"x": 1}))
        await s.commit()
    before = await _snapshot(sessionmaker)
    r = await admin.post(
        "/api/v1/batches",
        json={"type": "instance.archive_delete", "ids": [777, 778], "dry_run": True},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["success"], r.json()["failed"]) == (1, 1)
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(InstanceArchive)) == 1
    d = setup.definition
    r = await admin.post(
        "/api/v1/definitions", json={k: d[k] for k in ("key", "name", "form", "nodes")}
    )
    assert r.status_code == 201, r.text
    r = await admin.post(
        "/api/v1/batches",
        json={
            "type": "instance.migrate",
            "filter": {"definition_key": "expense"},
            "params": {"definition_key": "expense", "target_version": 2},
            "dry_run": True,
        },
    )
    assert r.status_code == 200, r.text
    assert (r.json()["total"], r.json()["success"]) == (2, 2)
    after = await _snapshot(sessionmaker)
    assert {k: v for k, v in after.items() if k != "process_definitions"} == before
