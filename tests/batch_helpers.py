"""Helpers for batch tests: a ready expense definition with volume, waiting for a
condition (``eventually``, ``wait_for``: bounded polling, no timing assertions) and
waiting for the job runner to be idle (``idle``) before asserting that nothing more
happens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain import Wakeup
from app.runtime.backend import PRIORITIES, Runner
from app.runtime.context import JobContext
from tests.conftest import Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

FINAL = ("completed", "cancelled", "aborted")

T = TypeVar("T")

POLL_S = 0.05
"""Between two looks: often enough to notice quickly, rarely enough that the polling
requests do not compete with the work they wait for (two cores, SQLite's one writer)."""


async def eventually(
    check: Callable[[], Awaitable[T]],
    what: str,
    limit_s: float = 30,
    *,
    until: Callable[[T], object] = bool,
) -> T:
    """Poll ``check()`` until ``until(value)`` holds (by default: the value is truthy)
    and return that value; after ``limit_s`` seconds fail saying ``what`` never
    happened, with the last value seen. Nothing is asserted about how long it took."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = await check()
        if until(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {limit_s} s; last seen: {value!r}")
        await asyncio.sleep(POLL_S)


async def clock_passes(moment: Any) -> None:
    """Wait until the wall clock is past ``moment`` (an aware ``datetime`` or an ISO
    string): for tests whose point is that a time passes while nothing may happen."""
    from datetime import UTC, datetime

    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment

    async def now() -> datetime:
        return datetime.now(UTC)

    await eventually(now, f"the clock passes {when}", until=lambda t: t > when)


async def idle(app: FastAPI, limit_s: float = 30) -> None:
    """Wait until the app's job runner is idle, so that a test can then assert that
    nothing more happens (instead of sleeping and hoping the work was done by then).

    The runner's ``drained``: the embedded default's ``InProcessRunner``, or on
    PostgreSQL + Redis the ``app`` fixture's in-process arq ``WorkerGroup`` (kept in
    ``app.state.test_workers``: the API process runs no jobs there). Not for tests whose
    workers run in other processes (``external_workers``): wait there for a row or a
    status that proves the job ran."""
    runner: Runner | None = getattr(app.state, "test_workers", None) or app.state.runner
    assert runner is not None, "idle() needs in-process workers"
    await asyncio.wait_for(runner.drained(), limit_s)


class RecordingQueue:
    """A broker that keeps the wake-ups instead of sending them (nothing runs by itself)."""

    def __init__(self) -> None:
        self.sent: list[Wakeup] = []

    async def enqueue(self, wakeup: Wakeup) -> None:
        self.sent.append(wakeup)

    async def depth(self) -> dict[str, int]:
        return {p: sum(w.priority == p for w in self.sent) for p in PRIORITIES}

    async def ping(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def recording_context(app: FastAPI) -> tuple[JobContext, RecordingQueue]:
    """The app's job context with its queue replaced by a ``RecordingQueue``: a test runs
    a job by hand and sees what it would have enqueued."""
    base: JobContext = app.state.jobs
    queue = RecordingQueue()
    return replace(base, queue=queue, stopping=asyncio.Event()), queue


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
    return await eventually(
        lambda: get_batch(actor, batch_id),
        f"batch {batch_id} reaches {statuses}",
        limit_s,
        until=lambda body: body["status"] in statuses,
    )


async def get_batch(actor: Actor, batch_id: int) -> dict[str, Any]:
    """GET /batches/{id} (must answer 200)."""
    r = await actor.get(f"/api/v1/batches/{batch_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


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
