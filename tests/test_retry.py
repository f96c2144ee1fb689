"""Retry semantics: retry_count, exhausted items, lock release, the
auto-retry cron (retryable failures only: see also tests/test_failures.py), and the
errors for retries that cannot happen."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches.recovery import auto_retry
from app.models import ActionLog, Task
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

BAD = {"decision": "approve", "form_data": {"category": "yachts"}}
APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def locked(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int(
            await s.scalar(select(func.count()).where(Task.locked_by_batch_id.is_not(None))) or 0
        )


async def retry(actor: Actor, batch_id: int, **body: Any) -> dict[str, Any]:
    r = await actor.post(f"/api/v1/batches/{batch_id}/retry", json=body or None)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_retries_until_exhausted_then_unlock(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    batch = await create(
        alice, {"type": "task.approve", "ids": setup.task_ids, "params": BAD, "max_retries": 2}
    )
    assert (await wait_for(alice, batch["id"]))["failed"] == 5
    assert await locked(sessionmaker) == 0  # a validation failure: no lock kept for it

    for attempt in (1, 2):
        out = await retry(alice, batch["id"])  # a user may retry it: re-locked, run again
        assert (out["requeued"], out["exhausted"]) == (5, 0)
        assert out["batch"]["status"] == "running" and out["batch"]["failed"] == 0
        done = await wait_for(alice, batch["id"])
        assert (done["status"], done["failed"]) == ("completed", 5)
        assert {d["retry_count"] for d in await details(alice, batch["id"])} == {attempt}
    assert await locked(sessionmaker) == 0

    out = await retry(alice, batch["id"])
    assert (out["requeued"], out["exhausted"], out["batch"]["status"]) == (0, 5, "completed")
    async with sessionmaker() as s:
        retried = await s.scalar(
            select(func.count()).where(
                ActionLog.batch_id == batch["id"], ActionLog.action == "batch.retried"
            )
        )
    assert retried == 3


async def test_retry_selected_items_and_refusals(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": BAD})
    await wait_for(alice, batch["id"])
    out = await retry(alice, batch["id"], item_ids=setup.task_ids[:1])
    assert (out["requeued"], out["exhausted"]) == (1, 0)
    await wait_for(alice, batch["id"])
    counts = {d["item_id"]: d["retry_count"] for d in await details(alice, batch["id"])}
    assert counts == {setup.task_ids[0]: 1, **{t: 0 for t in setup.task_ids[1:]}}

    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": [987654]})
    assert r.status_code == 404 and "987654" in r.json()["detail"]
    r = await bob.post(f"/api/v1/batches/{batch['id']}/retry")
    assert r.status_code == 404
    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": ["x"]})
    assert r.status_code == 422

    cancelled = await create(alice, {"type": "task.approve", "ids": [424242], "params": APPROVE})
    await wait_for(alice, cancelled["id"])
    r = await alice.delete(f"/api/v1/batches/{cancelled['id']}", params={"cascade": "true"})
    assert r.status_code == 204
    assert (await alice.post(f"/api/v1/batches/{cancelled['id']}/retry")).status_code == 404


async def test_retry_of_a_cancelled_batch_is_409(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 1500)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "chunk_size": 5},
    )
    assert (await alice.delete(f"/api/v1/batches/{batch['id']}")).status_code == 200
    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry")
    assert r.status_code == 409 and r.json()["error"] == "Conflict"


async def hold(actor: Actor, task_ids: list[int]) -> dict[str, Any]:
    """A batch created suspended: it holds the tasks' locks and runs nothing."""
    body = {"type": "task.approve", "ids": task_ids, "params": APPROVE, "start_suspended": True}
    return await create(actor, body)


@pytest.mark.parametrize(
    # max_retries is generous: the cron may retry (and fail) again before the test frees
    # the tasks, and must not exhaust the items meanwhile.
    "settings_overrides",
    [{"auto_retry_delay": 0, "recover_interval": 0.3, "max_retries": 20}],
)
async def test_auto_retry_cron_finishes_items_once_their_cause_is_gone(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Items fail because another batch holds their tasks (``locked``: retryable); once
    it lets them go, the cron retries them (like the PHP fallback cron) and the batch
    completes with nothing failed."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 6)
    holder = await hold(alice, setup.task_ids)
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    first = await wait_for(alice, batch["id"])
    assert first["failed"] == 6
    assert {d["error_code"] for d in await details(alice, batch["id"])} == {"locked"}
    assert (await alice.delete(f"/api/v1/batches/{holder['id']}")).status_code == 200
    now = await eventually(
        lambda: get_batch(alice, batch["id"]),
        "the auto-retry cron completes the batch",
        until=lambda b: b["status"] == "completed" and b["success"] == 6,
    )
    assert (now["success"], now["failed"]) == (6, 0), now
    assert min(d["retry_count"] for d in await details(alice, batch["id"])) >= 1
    assert await locked(sessionmaker) == 0
    async with sessionmaker() as s:
        auto = await s.scalar(
            select(func.count()).where(
                ActionLog.batch_id == batch["id"], ActionLog.action == "batch.auto_retried"
            )
        )
    assert auto and auto >= 1


@pytest.mark.parametrize(
    "settings_overrides", [{"auto_retry_delay": 0, "recover_interval": 0.3, "max_retries": 2}]
)
async def test_auto_retry_stops_at_max_retries(
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    holder = await hold(alice, setup.task_ids)
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    await eventually(
        lambda: details(alice, batch["id"]),
        "every item failed twice over",
        until=lambda items: {(d["status"], d["retry_count"]) for d in items} == {("failed", 2)},
    )
    await wait_for(alice, batch["id"])
    await auto_retry(app.state.jobs)  # a further pass (run here to be sure of it) ...
    await idle(app)  # ... and whatever it woke: nothing changes
    final = (await alice.get(f"/api/v1/batches/{batch['id']}")).json()
    assert (final["status"], final["failed"]) == ("completed", 3)
    assert {d["retry_count"] for d in await details(alice, batch["id"])} == {2}
    async with sessionmaker() as s:
        holders = set(
            await s.scalars(select(Task.locked_by_batch_id).where(Task.id.in_(setup.task_ids)))
        )
    assert holders == {holder["id"]}  # the holder's locks, never the failed batch's


async def test_retry_names_more_ids_than_a_statement_may_bind(alice: Actor) -> None:
    """40 000 ids: more than asyncpg binds in one statement (32 767; SQLite builds allow
    32 766 to 250 000), so the ids must travel as one array."""
    many = list(range(1, 40_001))
    batch = await create(alice, {"type": "task.approve", "ids": many, "params": APPROVE})
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["total"], done["failed"]) == ("completed", 40_000, 40_000)

    out = await retry(alice, batch["id"], item_ids=many)
    # Re-locking finds every task missing: each fails again at once, nothing runs.
    assert (out["requeued"], out["exhausted"], out["batch"]["failed"]) == (40_000, 0, 40_000)
    again = await wait_for(alice, batch["id"])
    assert (again["status"], again["failed"]) == ("completed", 40_000)

    r = await alice.post(f"/api/v1/batches/{batch['id']}/retry", json={"item_ids": [*many, 50_001]})
    assert r.status_code == 404, r.text
    assert r.json()["detail"] == f"Items 50001 are not in batch {batch['id']}."
