"""Failures that explain themselves (an ``error_code`` and ``retryable`` on every failed
detail) and retries that make sense: automatic retries touch only retryable failures,
a non-retryable one frees its item at once, a transient error is retried in the same
pass, and a manual retry re-locks its items or says why it cannot."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import executor
from app.batches.recovery import auto_retry
from app.domain import ErrorCode, Outcome
from app.errors import failure_code
from app.models import ActionLog, ProcessInstance, Task
from app.operations import OPERATIONS, BatchRun, Operation, WorkItem, register
from app.operations.targets import INSTANCES
from tests.batch_helpers import (
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
SETTINGS = {"auto_retry_delay": 0, "recover_interval": 3600, "jobs_per_batch": 1}
"""The auto-retry cron may act at once, but only when a test runs it; one executor per
batch, so a chunk that failed is isolated by the executor that claimed it (a second one
could claim its items meanwhile, and the count of attempts would be a race)."""


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return SETTINGS


async def set_process_status(
    sm: async_sessionmaker[AsyncSession], status: str, task_ids: list[int] | None = None
) -> None:
    """Every process (or those of ``task_ids``) to ``status``, straight in the database."""
    stmt = update(ProcessInstance).values(status=status)
    if task_ids is not None:
        stmt = stmt.where(
            ProcessInstance.id.in_(select(Task.instance_id).where(Task.id.in_(task_ids)))
        )
    async with sm() as s:
        await s.execute(stmt)
        await s.commit()


async def lock_holders(sm: async_sessionmaker[AsyncSession], task_ids: list[int]) -> set[Any]:
    async with sm() as s:
        return set(await s.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(task_ids))))


async def auto_retries(sm: async_sessionmaker[AsyncSession], batch_id: int) -> int:
    async with sm() as s:
        n = await s.scalar(
            select(func.count()).where(
                ActionLog.batch_id == batch_id, ActionLog.action == "batch.auto_retried"
            )
        )
    return int(n or 0)


def failure(d: dict[str, Any]) -> tuple[Any, ...]:
    return d["status"], d["error_code"], d["retryable"]


async def test_suspended_processes_fail_as_wrong_state_and_no_cron_retries_them(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    await set_process_status(sessionmaker, "suspended")
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["failed"]) == ("completed", 5)
    items = await details(alice, batch["id"])
    assert {failure(d) for d in items} == {("failed", "wrong_state", False)}
    assert {d["error"] for d in items} == {
        f"The process of task {t} is suspended, not active." for t in setup.task_ids
    }
    assert await lock_holders(sessionmaker, setup.task_ids) == {None}  # free at once

    await auto_retry(app.state.jobs)  # a failure no retry can fix: nothing to do
    await idle(app)
    after = await get_batch(alice, batch["id"])
    assert (after["status"], after["failed"], after["updated_at"]) == (
        "completed",
        5,
        done["updated_at"],
    )
    assert {d["retry_count"] for d in await details(alice, batch["id"])} == {0}
    assert await auto_retries(sessionmaker, batch["id"]) == 0

    await set_process_status(sessionmaker, "active")
    r = await approve(alice, setup.task_ids[0], form_data={"category": "travel"})
    assert r.status_code == 200, r.text  # nobody's lock is in the way

    # The user fixed the cause: a manual retry re-locks and runs the rest.
    r = await alice.post(
        f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": setup.task_ids[1:3]}
    )
    assert r.status_code == 202, r.text
    assert (r.json()["requeued"], r.json()["exhausted"]) == (2, 0)
    again = await wait_for(alice, batch["id"])
    assert (again["status"], again["success"], again["failed"]) == ("completed", 2, 3)
    by_item = {d["item_id"]: d for d in await details(alice, batch["id"])}
    assert [failure(by_item[t]) for t in setup.task_ids[1:3]] == [("success", None, None)] * 2
    assert by_item[setup.task_ids[1]]["retry_count"] == 1


async def test_a_manual_retry_of_an_item_another_batch_holds_fails_it_as_locked(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    await set_process_status(sessionmaker, "suspended")
    first = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    assert (await wait_for(alice, first["id"]))["failed"] == 2
    await set_process_status(sessionmaker, "active")
    holder = await create(
        alice,
        {
            "type": "task.approve",
            "ids": setup.task_ids[:1],
            "params": APPROVE,
            "start_suspended": True,
        },
    )
    assert await lock_holders(sessionmaker, setup.task_ids[:1]) == {holder["id"]}

    r = await alice.post(f"/api/v1/batches/{first['id']}/retry")
    assert r.status_code == 202, r.text
    # Both retried; the held one fails at once, the other runs.
    assert (r.json()["requeued"], r.json()["batch"]["failed"]) == (2, 1)
    done = await wait_for(alice, first["id"])
    assert (done["success"], done["failed"]) == (1, 1)
    by_item = {d["item_id"]: d for d in await details(alice, first["id"])}
    held = by_item[setup.task_ids[0]]
    assert failure(held) == ("failed", "locked", True)
    assert held["error"] == f"Task {setup.task_ids[0]} is locked by batch {holder['id']}."
    assert failure(by_item[setup.task_ids[1]]) == ("success", None, None)
    assert await lock_holders(sessionmaker, setup.task_ids[:1]) == {holder["id"]}


async def test_retrying_items_that_never_failed_is_409_naming_them(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    bad = setup.task_ids[0]
    async with sessionmaker() as s:
        instance = await s.scalar(select(Task.instance_id).where(Task.id == bad))
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id == instance).values(status="suspended")
        )
        await s.commit()
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (2, 1)
    good = setup.task_ids[1:]

    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": [bad, *good]})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "Conflict"
    assert r.json()["detail"].startswith(
        f"Items {good[0]}, {good[1]} did not fail: {good[0]} succeeded, {good[1]} succeeded."
    )
    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": [bad, 987654]})
    assert r.status_code == 404 and "987654" in r.json()["detail"]
    assert (await get_batch(alice, batch["id"]))["failed"] == 1  # nothing was requeued


async def test_a_non_retryable_failure_frees_its_task_while_later_chunks_wait(
    monkeypatch: pytest.MonkeyPatch,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Chunks of 2 over 6 tasks whose processes are suspended; the executor is held
    before its second chunk (a gate, not a sleep). At that moment the first chunk's
    tasks have failed as ``wrong_state`` and are free — approvable by hand once their
    process is active — while the 4 tasks of the later chunks are still pending and
    locked by the batch."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    await set_process_status(sessionmaker, "suspended")
    first_chunk, gate = asyncio.Event(), asyncio.Event()
    real = executor.run_next_chunk

    async def gated(ctx: Any, batch_id: int, **kw: Any) -> executor.Turn:
        if first_chunk.is_set():
            await gate.wait()
        turn = await real(ctx, batch_id, **kw)
        if turn.result is not None and turn.result.counts.total():
            first_chunk.set()  # committed: run_next_chunk returns after its commit
        return turn

    monkeypatch.setattr(executor, "run_next_chunk", gated)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "chunk_size": 2},
    )
    try:

        async def first_chunk_done() -> bool:
            return first_chunk.is_set()

        await eventually(first_chunk_done, "the first chunk committed")
        mid = await get_batch(alice, batch["id"])
        assert (mid["status"], mid["failed"], mid["pending"]) == ("running", 2, 4), mid
        items = await details(alice, batch["id"])
        failed = [d["item_id"] for d in items if d["status"] == "failed"]
        waiting = [d["item_id"] for d in items if d["status"] == "pending"]
        assert {failure(d) for d in items if d["item_id"] in failed} == {
            ("failed", "wrong_state", False)
        }
        assert await lock_holders(sessionmaker, failed) == {None}  # freed at once
        assert await lock_holders(sessionmaker, waiting) == {batch["id"]}

        await set_process_status(sessionmaker, "active", [failed[0], waiting[0]])
        r = await approve(alice, failed[0], form_data={"category": "travel"})
        assert r.status_code == 200, r.text  # by hand, while the batch still runs
        r = await approve(alice, waiting[0], form_data={"category": "travel"})
        assert r.status_code == 409, r.text  # a later chunk's task: still the batch's
    finally:
        gate.set()
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 1, 5), done
    assert await lock_holders(sessionmaker, setup.task_ids) == {None}


# ----------------------------------------------------------------- transient failures


class Deadlocks(Operation):
    """Raises a deadlock (SQLSTATE 40P01, as PostgreSQL's driver reports it) for items
    whose count in ``left`` is above zero, one fewer each time."""

    type = "test.deadlocks"
    target = INSTANCES
    left: dict[int, int] = {}  # noqa: RUF012 - the test sets it

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        for item in items:
            if self.left.get(item.item_id, 0) > 0:
                self.left[item.item_id] -= 1
                raise OperationalError("UPDATE …", {}, _Deadlock("deadlock detected"))
        return [Outcome.success() for _ in items]


class _Deadlock(Exception):
    sqlstate = "40P01"


@pytest.fixture
def deadlocks() -> Iterator[type[Deadlocks]]:
    register(Deadlocks())
    Deadlocks.left = {}
    yield Deadlocks
    OPERATIONS.pop(Deadlocks.type, None)


async def test_a_deadlock_is_retried_in_the_same_pass(
    deadlocks: type[Deadlocks],
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 3)
    async with sessionmaker() as s:
        ids = list(await s.scalars(select(ProcessInstance.id).order_by(ProcessInstance.id)))
    # Once in the chunk (which then runs one item at a time), once on its own.
    deadlocks.left = {ids[1]: 2}
    batch = await create(admin, {"type": deadlocks.type, "ids": ids, "params": {}})
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 3, 0)
    counts = {
        d["item_id"]: (d["status"], d["retry_count"]) for d in await details(admin, batch["id"])
    }
    assert counts == {ids[0]: ("success", 0), ids[1]: ("success", 1), ids[2]: ("success", 0)}


async def test_a_lasting_deadlock_fails_as_transient_and_the_cron_retries_it(
    deadlocks: type[Deadlocks],
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 2)
    async with sessionmaker() as s:
        ids = list(await s.scalars(select(ProcessInstance.id).order_by(ProcessInstance.id)))
    deadlocks.left = {ids[0]: 1_000}
    batch = await create(admin, {"type": deadlocks.type, "ids": ids, "params": {}})
    done = await wait_for(admin, batch["id"])
    assert (done["status"], done["success"], done["failed"]) == ("completed", 1, 1)
    [stuck] = [d for d in await details(admin, batch["id"]) if d["status"] == "failed"]
    assert (failure(stuck), stuck["retry_count"]) == (("failed", "transient", True), 1)
    assert "it can be retried" in stuck["error"] and "detected" not in stuck["error"]

    await auto_retry(app.state.jobs)  # retryable: requeued, and fails again
    await idle(app)
    again = await wait_for(admin, batch["id"])
    assert (again["status"], again["success"], again["failed"]) == ("completed", 1, 1)
    assert await auto_retries(sessionmaker, batch["id"]) == 1
    [stuck] = [d for d in await details(admin, batch["id"]) if d["status"] == "failed"]
    assert (failure(stuck), stuck["retry_count"]) == (("failed", ErrorCode.TRANSIENT, True), 3)


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("orig", "code"),
    [
        (_DriverError("40P01"), ErrorCode.TRANSIENT),  # deadlock
        (_DriverError("40001"), ErrorCode.TRANSIENT),  # serialization failure
        (_DriverError("55P03"), ErrorCode.TRANSIENT),  # lock_timeout
        (_DriverError("57014"), ErrorCode.TRANSIENT),  # statement_timeout
        (sqlite3.OperationalError("database is locked"), ErrorCode.TRANSIENT),
        (_DriverError("23505"), ErrorCode.INTERNAL),  # a unique violation: retrying repeats it
        (sqlite3.OperationalError("no such table: x"), ErrorCode.INTERNAL),
    ],
)
def test_what_a_database_error_means_for_an_item(orig: Exception, code: ErrorCode) -> None:
    assert failure_code(OperationalError("UPDATE …", {}, orig)) is code
    assert failure_code(ValueError("a bug")) is ErrorCode.INTERNAL
