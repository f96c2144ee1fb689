"""The holes a hostile user found (issue "Trust"), each closed as the contract says:
no batch locks another user's tasks, hidden items fail like missing ones, an
Idempotency-Key cannot be replayed with another request, and the state owner wakes
every non-final state while no job polls a state it cannot move."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import state
from app.batches.monitor import monitor
from app.config import Settings
from app.domain import FINAL, BatchStatus
from app.models import Batch, Task
from tests.batch_helpers import create, details, expense_setup, recording_context, wait_for
from tests.conftest import Actor
from tests.factories import approve

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def _locked_by(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> set[int | None]:
    async with sm() as s:
        return set(await s.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(task_ids))))


# --------------------------------------------------------------------------- item locks


async def test_a_batch_never_locks_another_users_tasks(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """alice lists bob's tasks in a suspended batch: they fail at once, stay unlocked,
    and bob approves them himself while alice's batch waits."""
    mine = await expense_setup(sessionmaker, admin, alice, bob, 3)
    bobs = (await expense_setup(sessionmaker, admin, bob, alice, 2)).task_ids
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "ids": [*mine.task_ids, *bobs],
            "params": APPROVE,
            "start_suspended": True,
            "max_retries": 100,
        },
    )
    assert (batch["status"], batch["total"], batch["failed"]) == ("suspended", 5, 2)
    assert await _locked_by(sessionmaker, bobs) == {None}
    assert await _locked_by(sessionmaker, mine.task_ids) == {batch["id"]}
    failed = {d["item_id"]: d for d in await details(alice, batch["id"], status="failed")}
    assert {i: d["error"] for i, d in failed.items()} == {
        i: f"Task {i} does not exist." for i in bobs
    }
    assert all(d["finished_at"] for d in failed.values())
    # bob is not blocked
    r = await approve(bob, bobs[0], form_data={"category": "meals"})
    assert r.status_code == 200, r.text
    # and retrying alice's batch never takes bob's tasks either
    r = await alice.post(f"/api/v1/batches/{batch['id']}/activate")
    assert r.status_code == 200, r.text
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (3, 2)
    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry")
    assert r.status_code == 202 and r.json()["requeued"] == 2
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (3, 2)
    assert await _locked_by(sessionmaker, bobs) == {None}


async def test_an_admin_batch_over_others_tasks_locks_nothing(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """An admin sees every task but decides only their own: the others fail at once
    with the reason (the admin may see it) and stay free."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    batch = await create(
        admin,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "start_suspended": True},
    )
    assert batch["failed"] == 2
    assert await _locked_by(sessionmaker, setup.task_ids) == {None}
    errors = {d["error"] for d in await details(admin, batch["id"])}
    assert errors == {f"Only the assignee may decide task {i}." for i in setup.task_ids}


async def test_hidden_items_fail_exactly_like_missing_ones(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """A task of bob's that is completed, pending or locked by bob's own batch: alice's
    batch learns nothing about it — the same sentence as for an id that never existed."""
    bobs = (await expense_setup(sessionmaker, admin, bob, alice, 3)).task_ids
    assert (await approve(bob, bobs[0], form_data={"category": "meals"})).status_code == 200
    held = await create(
        bob, {"type": "task.approve", "ids": [bobs[1]], "params": APPROVE, "start_suspended": True}
    )
    assert await _locked_by(sessionmaker, [bobs[1]]) == {held["id"]}
    probe = [*bobs, 999_999]
    batch = await create(alice, {"type": "task.approve", "ids": probe, "params": APPROVE})
    done = await wait_for(alice, batch["id"])
    assert (done["failed"], done["ignored"], done["success"]) == (4, 0, 0)
    errors = {d["item_id"]: d["error"] for d in await details(alice, batch["id"])}
    assert errors == {i: f"Task {i} does not exist." for i in probe}
    # the single approval answers the same way: 404, never 403 or 409
    for task_id in probe:
        r = await approve(alice, task_id, form_data={"category": "meals"})
        assert r.status_code == 404, r.text
        assert r.json() == {"error": "NotFound", "detail": f"Task {task_id} does not exist."}


# --------------------------------------------------------------------------- idempotency


async def test_an_idempotency_key_reused_with_another_request_is_422(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    body: dict[str, Any] = {"type": "task.approve", "ids": setup.task_ids[:2], "params": APPROVE}
    key = {**alice.headers, "Idempotency-Key": "monday-run"}
    first = await create(alice, body, headers=key)
    for other in (
        {**body, "ids": setup.task_ids},
        {**body, "params": {**APPROVE, "comment": "changed"}},
        {**body, "priority": "high"},
    ):
        r = await alice.post("/api/v1/batches", json=other, headers=key)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "IdempotencyKeyReused"
        assert str(first["id"]) in r.json()["detail"]
    # the same request still answers with the first batch; the key is per user
    assert (await create(alice, body, 200, headers=key))["id"] == first["id"]
    r = await bob.post(
        "/api/v1/batches",
        json={**body, "ids": [1]},
        headers={**bob.headers, "Idempotency-Key": "monday-run"},
    )
    assert r.status_code == 202, r.text
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 2


async def test_a_header_key_and_a_body_key_that_differ_are_422(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Which key would count is not the caller's guess: two different keys are refused,
    the same key twice is one key."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 1)
    body: dict[str, Any] = {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE}
    header = {**alice.headers, "Idempotency-Key": "k-header"}
    for payload in (
        {**body, "idempotency_key": "k-body"},
        {**body, "dry_run": True, "idempotency_key": "x"},
    ):
        r = await alice.post("/api/v1/batches", json=payload, headers=header)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            "The Idempotency-Key header and the body's idempotency_key differ: send one."
        )
    async with sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0
    first = await create(alice, {**body, "idempotency_key": "k-header"}, headers=header)
    assert (await create(alice, body, 200, headers=header))["id"] == first["id"]


# --------------------------------------------------------------------------- state owner


def test_every_state_has_a_way_forward() -> None:
    """The transition table reaches a final state from every state, and ``wakeups``
    names a job for every state a job can move (nothing is left to a person except a
    suspended batch, nothing to the clock except a scheduled one)."""
    settings = Settings(database_url="postgresql+asyncpg://x/y", redis_url="redis://x")
    for status in BatchStatus:
        reachable, todo = set(), [status]
        while todo:
            for nxt in state.TRANSITIONS[todo.pop()]:
                if nxt not in reachable:
                    reachable.add(nxt)
                    todo.append(nxt)
        assert status in FINAL or reachable & FINAL, status
        jobs = {w.job for w in state.wakeups(settings, 1, status, "normal", seeding_done=False)}
        expected = {
            BatchStatus.CREATED: {"seed"},
            BatchStatus.SEEDING: {"seed", "execute", "monitor"},
            BatchStatus.RUNNING: {"seed", "execute", "monitor"},
            BatchStatus.SUSPENDED: {"seed"},
        }.get(status, set())
        assert jobs == expected, status
    running = state.wakeups(settings, 1, "running", "normal", seeding_done=True)
    assert [w.job for w in running] == ["execute"] * settings.jobs_per_batch + ["monitor"]
    assert state.wakeups(settings, 1, "suspended", "normal", seeding_done=True) == []
    assert not state.may_move("cancelled", BatchStatus.RUNNING)
    assert state.sources_of(BatchStatus.CANCELLED) == sorted(
        s.value for s in BatchStatus if s not in FINAL
    )


@pytest.mark.external_workers
@pytest.mark.parametrize("status", ["created", "suspended", "completed", "cancelled"])
async def test_a_monitor_stops_on_a_state_it_cannot_move(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    status: str,
) -> None:
    """Nothing polls for ever: a monitor that finds its batch created, suspended or
    final enqueues nothing (it used to re-enqueue itself every second)."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    async with sessionmaker() as s:
        await s.execute(update(Batch).where(Batch.id == batch["id"]).values(status=status))
        await s.commit()
    ctx, recorder = recording_context(app)
    await monitor(ctx, batch["id"])
    assert recorder.sent == []
