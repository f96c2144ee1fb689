"""The batch engine through the HTTP API: create, seed, execute, monitor, statistics,
lifecycle and locks, with task approval as the operation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ActionLog, Batch, BatchDetail, ProcessInstance, ProcessLog, Task
from tests.batch_helpers import (
    assert_counters_consistent,
    count,
    create,
    details,
    eventually,
    expense_setup,
    idle,
    wait_for,
)
from tests.conftest import Actor
from tests.factories import approve

APPROVE = {"decision": "approve", "comment": "ok", "form_data": {"category": "travel"}}
FILTER = {"definition_key": "expense", "node_id": "manager"}


async def test_filter_batch_approves_every_task_once(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3000)
    batch = await create(alice, {"type": "task.approve", "filter": FILTER, "params": APPROVE})
    assert batch["total"] == 3000 and batch["status"] in ("created", "seeding", "running")
    done = await wait_for(alice, batch["id"])
    assert done["status"] == "completed", done
    assert (done["success"], done["failed"], done["ignored"], done["cancelled"]) == (3000, 0, 0, 0)
    assert done["pending"] == 0 and done["running"] == 0 and done["progress"] == 1.0
    assert done["finished_at"] and done["started_at"]

    ids = setup.task_ids
    async with sessionmaker() as s:
        manager_done = await s.scalar(
            select(func.count()).where(Task.id.in_(ids), Task.status == "completed")
        )
        finance = (
            await s.execute(
                select(Task.instance_id, func.count())
                .where(Task.node_id == "finance")
                .group_by(Task.instance_id)
            )
        ).all()
        locked = await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None)))
        forms = list(await s.scalars(select(ProcessInstance.form_data)))
        logs = await s.scalar(
            select(func.count()).where(
                ProcessLog.batch_id == batch["id"], ProcessLog.action == "task.approved"
            )
        )
        by_status = dict(
            (
                await s.execute(
                    select(BatchDetail.status, func.count())
                    .where(BatchDetail.batch_id == batch["id"])
                    .group_by(BatchDetail.status)
                )
            ).all()
        )
    assert manager_done == 3000
    assert len(finance) == 3000 and all(n == 1 for _, n in finance)  # advanced exactly once
    assert locked == 0
    assert all(f["category"] == "travel" for f in forms)
    assert logs == 3000
    assert by_status == {"success": 3000}


async def test_id_batch_isolates_bad_items(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    good, done_elsewhere = setup.task_ids[:4], setup.task_ids[4]
    assert (
        await approve(alice, done_elsewhere, form_data={"category": "meals"})
    ).status_code == 200
    # bob's task: bob is not the assignee of the manager step
    bob_setup = await expense_setup(sessionmaker, admin, bob, alice, 1)
    ids = [*good, done_elsewhere, 999_999, bob_setup.task_ids[0]]
    batch = await create(
        alice, {"type": "task.approve", "ids": ids, "params": APPROVE, "chunk_size": 3}
    )
    assert batch["total"] == 7
    done = await wait_for(alice, batch["id"])
    assert done["status"] == "completed"
    assert (done["success"], done["failed"], done["ignored"]) == (4, 2, 1)
    by_item = {d["item_id"]: d for d in await details(alice, batch["id"])}
    assert by_item[999_999]["error"] == "Task 999999 does not exist."
    # bob's task is hidden from alice: it fails exactly like a missing one
    hidden = bob_setup.task_ids[0]
    assert by_item[hidden]["error"] == f"Task {hidden} does not exist."
    assert by_item[done_elsewhere]["status"] == "ignored"
    assert all(by_item[i]["status"] == "success" for i in good)
    failed = await details(alice, batch["id"], status="failed")
    assert {d["item_id"] for d in failed} == {999_999, bob_setup.task_ids[0]}


async def test_invalid_form_data_fails_items_not_the_batch(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    bad = {"decision": "approve", "form_data": {"category": "yachts"}}
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": bad})
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["failed"], done["success"]) == ("completed", 5, 0)
    errors = {d["error"] for d in await details(alice, batch["id"])}
    assert errors == {"Category must be one of travel, meals, other"}
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).where(Task.status == "pending")) == 5


async def test_idempotency_key_returns_the_same_batch(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    body = {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE}
    first = await create(alice, body, headers={**alice.headers, "Idempotency-Key": "k-1"})
    again = await create(alice, body, 200, headers={**alice.headers, "Idempotency-Key": "k-1"})
    assert again["id"] == first["id"]
    by_field = await create(alice, {**body, "idempotency_key": "k-1"}, 200)
    assert by_field["id"] == first["id"]
    assert await count(sessionmaker, select(Batch.id)) == 1
    await wait_for(alice, first["id"])


async def test_empty_batches_complete_at_once(alice: Actor) -> None:
    by_ids = await create(alice, {"type": "task.approve", "ids": [], "params": APPROVE})
    assert (by_ids["status"], by_ids["total"], by_ids["progress"]) == ("completed", 0, 1.0)
    by_filter = await create(
        alice, {"type": "task.approve", "filter": {"definition_key": "nothing"}, "params": APPROVE}
    )
    assert by_filter["status"] == "completed" and by_filter["total"] == 0


async def test_suspend_stops_progress_and_activate_resumes(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 2000)
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "filter": FILTER,
            "params": APPROVE,
            "chunk_size": 5,
            "start_suspended": True,
        },
    )
    assert batch["status"] == "suspended"
    # Created suspended: the items are resolved and locked, but none is applied.
    seeded = select(BatchDetail.id).where(BatchDetail.batch_id == batch["id"])
    await eventually(
        lambda: count(sessionmaker, seeded), "2000 details seeded", until=lambda n: n == 2000
    )
    await idle(app)  # whatever the seeding woke has run: still nothing applied
    seen = (await alice.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (seen["status"], seen["success"], seen["pending"]) == ("suspended", 0, 2000)
    async with sessionmaker() as s:
        locked = await s.scalar(select(func.count()).where(Task.locked_by_batch_id == batch["id"]))
    assert locked == 2000
    assert (await alice.post(f"/api/v1/batches/{batch['id']}/suspend")).status_code == 409

    # A running batch (nothing woken, so it stands still) suspends and stays put.
    async with sessionmaker() as s:
        await s.execute(update(Batch).where(Batch.id == batch["id"]).values(status="running"))
        await s.commit()
    r = await alice.post(f"/api/v1/batches/{batch['id']}/suspend")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "suspended"

    r = await alice.post(f"/api/v1/batches/{batch['id']}/activate")
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert (await alice.post(f"/api/v1/batches/{batch['id']}/activate")).status_code == 409
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"], done["total"]) == ("completed", 2000, 2000)
    async with sessionmaker() as s:
        actions = list(
            await s.scalars(
                select(ActionLog.action)
                .where(ActionLog.batch_id == batch["id"])
                .order_by(ActionLog.id)
            )
        )
        advanced = await s.scalar(
            select(func.count()).where(Task.node_id == "finance", Task.status == "pending")
        )
    assert actions == ["batch.created", "batch.suspended", "batch.activated"]
    assert advanced == 2000


async def test_cancel_while_seeding_leaves_nothing_behind(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """A DELETE that lands while seed pages are being written: no page may commit after
    it, so no pending detail and no task lock outlives the cancel (or the purge)."""
    await expense_setup(sessionmaker, admin, alice, bob, 3000)
    body = {
        "type": "task.approve",
        "filter": FILTER,
        "params": APPROVE,
        "chunk_size": 5,  # 50-item pages: seeding takes many pages
        "start_suspended": True,
    }
    kept = await create(alice, body)
    purged = await create(alice, body)
    seeded = select(BatchDetail.id).where(BatchDetail.batch_id == kept["id"])
    await eventually(lambda: count(sessionmaker, seeded), "seeding under way")
    r = await alice.delete(f"/api/v1/batches/{kept['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    r = await alice.delete(f"/api/v1/batches/{purged['id']}", params={"cascade": "true"})
    assert r.status_code == 204, r.text
    await idle(app)  # any seed job still queued has run (and must have stopped)
    final = (await alice.get(f"/api/v1/batches/{kept['id']}")).json()
    assert final["status"] == "cancelled"
    assert_counters_consistent(final)
    rows = await details(alice, kept["id"])
    assert len(rows) == final["total"]
    assert {d["status"] for d in rows} <= {"cancelled", "failed"}
    async with sessionmaker() as s:
        orphans = await s.scalar(select(func.count()).where(BatchDetail.batch_id == purged["id"]))
        still_locked = await s.scalar(
            select(func.count()).where(Task.locked_by_batch_id.is_not(None))
        )
    assert orphans == 0
    assert still_locked == 0


async def test_cancel_releases_locks_and_keeps_history_then_cascade_purges(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 1000)
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "ids": setup.task_ids,
            "params": APPROVE,
            "chunk_size": 5,
            "start_suspended": True,
        },
    )
    assert batch["status"] == "suspended"
    r = await alice.delete(f"/api/v1/batches/{batch['id']}")
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert cancelled["cancelled"] > 0
    assert cancelled["success"] + cancelled["cancelled"] == 1000
    assert_counters_consistent(cancelled)
    await idle(app)  # a seed or run job the cancel raced has run: it changed nothing
    kept = (await alice.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (kept["status"], kept["cancelled"]) == ("cancelled", cancelled["cancelled"])
    async with sessionmaker() as s:
        locked = await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None)))
        pending = await s.scalar(
            select(func.count()).where(Task.status == "pending", Task.node_id == "manager")
        )
    assert locked == 0
    assert pending == cancelled["cancelled"]
    assert len(await details(alice, batch["id"], status="cancelled")) == cancelled["cancelled"]

    r = await alice.delete(f"/api/v1/batches/{batch['id']}", params={"cascade": "true"})
    assert r.status_code == 204
    assert (await alice.get(f"/api/v1/batches/{batch['id']}")).status_code == 404
    assert await count(sessionmaker, select(BatchDetail.id)) == 0


async def test_failure_threshold_aborts(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 60)
    missing = list(range(900_001, 900_041))  # 40 items that fail first
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "ids": [*missing, *setup.task_ids],
            "params": APPROVE,
            "chunk_size": 10,
            "failure_threshold": 0.5,
        },
    )
    done = await wait_for(alice, batch["id"])
    assert done["status"] == "aborted", done
    assert done["failed"] >= 20 and done["cancelled"] > 0
    assert done["pending"] == 0 and done["total"] == 100
    assert_counters_consistent(done)
    async with sessionmaker() as s:
        locked = await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None)))
    assert locked == 0


async def test_locks_conflict_then_retry_after_holder_gives_up(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    held = setup.task_ids[:2]
    # The holder, created suspended, holds its items' locks until it runs or is cancelled.
    holder = await create(
        alice, {"type": "task.approve", "ids": held, "params": APPROVE, "start_suspended": True}
    )
    r = await approve(alice, held[0], form_data={"category": "meals"})
    assert r.status_code == 409 and f"locked by batch {holder['id']}" in r.json()["detail"]

    second = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    done = await wait_for(alice, second["id"])
    assert (done["success"], done["failed"]) == (2, 2)
    errors = {d["item_id"]: d["error"] for d in await details(alice, second["id"], status="failed")}
    assert errors == {tid: f"Task {tid} is locked by batch {holder['id']}." for tid in held}

    # The holder is cancelled: its locks are released, and it cannot be retried.
    assert (await alice.delete(f"/api/v1/batches/{holder['id']}")).status_code == 200
    r = await alice.post(f"/api/v1/batches/{holder['id']}/retry")
    assert r.status_code == 409

    r = await alice.post(f"/api/v1/batches/{second['id']}/retry", json={"item_ids": held})
    assert r.status_code == 202, r.text
    assert (r.json()["requeued"], r.json()["exhausted"]) == (2, 0)
    assert r.json()["batch"]["status"] == "running"
    done = await wait_for(alice, second["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 4, 0)
    retried = {d["item_id"]: d["retry_count"] for d in await details(alice, second["id"])}
    assert retried == {**{t: 1 for t in held}, **{t: 0 for t in setup.task_ids[2:]}}


async def test_visibility_and_listing(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    mine = await create(alice, {"type": "task.approve", "ids": [], "params": APPROVE})
    theirs = await create(bob, {"type": "task.approve", "ids": [], "params": APPROVE})
    assert (await bob.get(f"/api/v1/batches/{mine['id']}")).status_code == 404
    assert (await bob.get(f"/api/v1/batches/{mine['id']}/details")).status_code == 404
    assert (await bob.delete(f"/api/v1/batches/{mine['id']}")).status_code == 404
    listed = (await alice.get("/api/v1/batches")).json()
    assert [b["id"] for b in listed["items"]] == [mine["id"]] and listed["total"] == 1
    everything = (await admin.get("/api/v1/batches", params={"page_size": 10})).json()
    assert [b["id"] for b in everything["items"]] == [theirs["id"], mine["id"]]
    only_bob = (await admin.get("/api/v1/batches", params={"creator_id": bob.id})).json()
    assert [b["id"] for b in only_bob["items"]] == [theirs["id"]]
    assert (await alice.get("/api/v1/batches", params={"page_size": 5000})).status_code == 422


@pytest.mark.parametrize("settings_overrides", [{"max_items": 5}])
async def test_bad_create_requests_write_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 8)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"type": "task.nope", "ids": [1], "params": APPROVE}, 422, "type"),
        ({"type": "task.approve", "params": APPROVE}, 422, "ids"),
        ({"type": "task.approve", "ids": [1], "filter": FILTER, "params": APPROVE}, 422, "ids"),
        ({"type": "task.approve", "ids": [1], "params": {"decision": "maybe"}}, 422, "decision"),
        ({"type": "task.approve", "ids": [1], "params": {"colour": "red"}}, 422, "colour"),
        ({"type": "task.approve", "filter": {"planet": "x"}, "params": APPROVE}, 422, "planet"),
        (
            {"type": "task.approve", "ids": [1], "params": APPROVE, "chunk_size": 0},
            422,
            "chunk_size",
        ),
        ({"type": "task.approve", "ids": ["a"], "params": APPROVE}, 422, "ids"),
        (
            {"type": "task.approve", "ids": [1], "params": APPROVE, "priority": "urgent"},
            422,
            "priority",
        ),
        ({"type": "task.approve", "ids": list(range(1, 7)), "params": APPROVE}, 413, ""),
        ({"type": "task.approve", "filter": FILTER, "params": APPROVE}, 413, ""),
    ]
    for body, status, field in cases:
        r = await alice.post("/api/v1/batches", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["error"] in ("ValidationError", "PayloadTooLarge") and err["detail"]
        if field:
            assert any(field in ".".join(map(str, f["loc"])) for f in err["fields"]), err
    r = await alice.client.post(
        "/api/v1/batches",
        content=b"{not json",
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert (
        await alice.client.post("/api/v1/batches", json={"type": "task.approve", "ids": []})
    ).status_code == 401
    assert await count(sessionmaker, select(Batch.id)) == 0
    assert await count(sessionmaker, select(BatchDetail.id)) == 0
    assert await count(sessionmaker, select(ActionLog.id)) == 0
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None))) == 0


async def test_high_priority_batch_is_not_starved_by_low_priority_bulk(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3001)
    bulk_ids, urgent_id = setup.task_ids[:3000], setup.task_ids[3000]
    bulk = await create(
        alice,
        {
            "type": "task.approve",
            "ids": bulk_ids,
            "params": APPROVE,
            "priority": "low",
            "chunk_size": 5,
        },
    )
    urgent = await create(
        alice,
        {"type": "task.approve", "ids": [urgent_id], "params": APPROVE, "priority": "high"},
    )
    assert urgent["priority"] == "high"
    done = await wait_for(alice, urgent["id"])
    assert done["success"] == 1
    meanwhile = (await alice.get(f"/api/v1/batches/{bulk['id']}")).json()
    # The urgent batch finished while the bulk was still at work: judged by the
    # batches' own finish times, so a slow poll on a busy machine cannot fake it. The
    # bulk may not even have begun ('created': the runner took the urgent one first).
    if meanwhile["status"] in ("created", "running"):
        assert meanwhile["success"] < 3000
        # (That the bulk itself runs to the end is shown elsewhere: stop it here.)
        r = await alice.delete(f"/api/v1/batches/{bulk['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    else:
        assert meanwhile["status"] == "completed"
        finished = [datetime.fromisoformat(b["finished_at"]) for b in (done, meanwhile)]
        assert finished[0] < finished[1], (done, meanwhile)


async def test_start_suspended_with_nothing_to_run_completes_at_once(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Every listed item failed at creation (missing): nothing would ever run, so the
    batch does not wait suspended at 100 % for an activation; one runnable item keeps it
    suspended."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 1)
    body = {"type": "task.approve", "params": APPROVE, "start_suspended": True}
    batch = await create(alice, {**body, "ids": [900_001, 900_002]})
    assert (batch["status"], batch["failed"], batch["progress"]) == ("completed", 2, 1.0)
    assert batch["finished_at"] is not None
    mixed = await create(alice, {**body, "ids": [setup.task_ids[0], 900_003]})
    assert (mixed["status"], mixed["failed"], mixed["pending"]) == ("suspended", 1, 1)
