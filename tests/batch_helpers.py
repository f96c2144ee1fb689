"""Helpers for batch tests: a ready expense definition with volume, and waiting for a
batch to reach a state (bounded polling; no timing assertions)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.queue.backend import QueueBackend, Wakeup
from app.queue.context import JobContext
from tests.conftest import Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

FINAL = ("completed", "cancelled", "aborted")


class RecordingQueue(QueueBackend):
    """A queue that keeps the wake-ups instead of sending them (nothing runs by itself)."""

    def __init__(self) -> None:
        self.sent: list[Wakeup] = []

    async def enqueue(self, wakeup: Wakeup) -> None:
        self.sent.append(wakeup)


def recording_context(app: FastAPI) -> tuple[JobContext, RecordingQueue]:
    """The app's job context with its queue replaced by a ``RecordingQueue``: a test runs
    a job by hand and sees what it would have enqueued."""
    base: JobContext = app.state.jobs
    queue = RecordingQueue()
    return JobContext(base.settings, base.sessionmaker, queue, base.progress, base.semaphore), queue


@dataclass
class Setup:
    definition: dict[str, Any]
    task_ids: list[int]


async def expense_setup(
    sm: async_sessionmaker[AsyncSession],
    admin: Actor,
    manager: Actor,
    finance: Actor,
    n: int,
    **kw: Any,
) -> Setup:
    """An expense definition (manager → finance) and ``n`` pending manager tasks."""
    definition = await create_definition(admin, expense_definition(manager.id, finance.id))
    ids = await bulk_tasks(
        sm,
        definition_id=definition["id"],
        definition_key="expense",
        node_id="manager",
        assignee_id=manager.id,
        initiator_id=admin.id,
        n=n,
        **kw,
    )
    return Setup(definition, ids)


async def create(
    actor: Actor, body: dict[str, Any], status: int = 202, **kw: Any
) -> dict[str, Any]:
    r = await actor.post("/api/v1/batches", json=body, **kw)
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


async def wait_for(
    actor: Actor, batch_id: int, statuses: tuple[str, ...] = FINAL, limit_s: float = 90
) -> dict[str, Any]:
    """Poll GET /batches/{id} until its status is one of ``statuses``."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        r = await actor.get(f"/api/v1/batches/{batch_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in statuses:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"batch {batch_id} still {body['status']}: {body}")
        await asyncio.sleep(0.05)


async def details(actor: Actor, batch_id: int, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        r = await actor.get(
            f"/api/v1/batches/{batch_id}/details",
            params={"page": page, "page_size": 1000, **params},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        if len(items) >= body["total"] or not body["items"]:
            return items
        page += 1


async def count(sm: async_sessionmaker[AsyncSession], stmt: Any) -> int:
    async with sm() as session:
        return int(await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def assert_counters_consistent(batch: dict[str, Any]) -> None:
    finished = batch["success"] + batch["failed"] + batch["ignored"] + batch["cancelled"]
    assert finished + batch["pending"] + batch["running"] == batch["total"], batch


async def statements_of_chunk(
    sm: async_sessionmaker[AsyncSession], op: Any, run: Any, item_ids: list[int]
) -> int:
    """Apply ``op`` to one chunk and count the statements it sent (BEGIN aside), on this
    session's connection only: background crons share the engine. Every item must
    succeed."""
    from sqlalchemy import event

    from app.operations import WorkItem

    seen: list[str] = []

    def count(*args: Any) -> None:
        if not args[2].startswith("BEGIN"):
            seen.append(args[2])

    async with sm() as session:
        connection = (await session.connection()).sync_connection
        assert connection is not None
        event.listen(connection, "before_cursor_execute", count)
        try:
            items = [WorkItem(detail_id=i, item_id=i) for i in item_ids]
            outcomes = await op.apply(session, run, items)
        finally:
            event.remove(connection, "before_cursor_execute", count)
        await session.commit()
    assert {o.status for o in outcomes} == {"success"}
    return len(seen)
