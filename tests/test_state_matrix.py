"""Recovery from every non-final batch state with the database alone.

Each scenario brings a batch into one state with nobody left to move it on: every
queued wake-up is lost and/or the worker is SIGKILLed. Then a worker starts, and the
batch must end ``completed`` with every item applied exactly once.

One scenario function per state, run on whichever backend the session uses (the
fixture app never runs jobs: ``external_workers``):

- PostgreSQL + Redis: workers are real ``batchd worker`` processes (the fixture app only
  enqueues into Redis); losing the wake-ups is Redis FLUSHALL.
- SQLite (the embedded default, one process): the fixture app's runner runs nothing, so
  the wake-ups it holds are lost by construction, and those of a stopped or killed
  runner die with it. "A worker starts" is a fresh app on the same database file (a
  restart); the real process to SIGKILL is ``batchd serve``.

A process is killed "mid-batch" deterministically: it is stopped (SIGSTOP) and let run
in short slices until the database shows some items done, then killed while stopped,
so what the test saw is exactly what the process left behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, closing
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.main import create_app
from app.models import Batch, BatchDetail, ProcessInstance, Task
from tests.batch_helpers import clock_passes, create, details, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, TEST_REDIS, Actor
from tests.serve_proc import ServeProcess
from tests.test_crash_safety import APPROVE, FAST_RECOVERY, FILTER, assert_applied_exactly_once
from tests.workers_proc import WorkerProcess, run_in_slices

N = 200
"""Items per batch (one task.approve item per expense instance)."""
N_KILLED = 600
"""Items of the batches killed mid-run: room for the slices before the kill."""
CHUNK = 20
JOBS_PER_SEED = 1
"""A seed page is CHUNK × JOBS_PER_SEED = 20 items: a filter batch seeds in many pages."""
RECOVERY_LIMIT_S = 20.0
"""Bound on the wait for recovery (expected: start_timeout/stuck_after 2 s + one recover
pass every 1 s + a few seconds of work and start-up). Only a stuck batch reaches it."""

pytestmark = pytest.mark.external_workers


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**FAST_RECOVERY, "chunk_size": CHUNK, "jobs_per_seed": JOBS_PER_SEED}


Proc = WorkerProcess | ServeProcess


class Rig:
    """The backend-specific moves every scenario is written with."""

    def __init__(
        self,
        settings: Settings,
        app: FastAPI,
        sm: async_sessionmaker[AsyncSession],
        admin: Actor,
        alice: Actor,
        bob: Actor,
    ) -> None:
        self.settings, self.app, self.sm = settings, app, sm
        self.admin, self.alice, self.bob = admin, alice, bob
        self.task_ids: list[int] = []
        self.procs: list[Proc] = []
        self.lives: list[AsyncExitStack] = []

    async def expense(self, n: int) -> list[int]:
        """``n`` pending expense tasks of alice (manager), one per active instance."""
        setup = await expense_setup(self.sm, self.admin, self.alice, self.bob, n)
        self.task_ids = setup.task_ids
        return self.task_ids

    # ------------------------------------------------------------------ the failures

    async def lose_wakeups(self) -> None:
        """Lose every queued wake-up."""
        if ON_POSTGRES:
            from redis.asyncio import Redis

            redis = Redis.from_url(TEST_REDIS or "")
            await redis.flushall()
            await redis.aclose()
        # SQLite: the fixture app's runner never runs the wake-ups it holds, and a stopped
        # or killed runner's died with it: nothing is left to lose.

    async def stop_workers(self) -> None:
        """Stop every worker started so far: SIGKILL a process, shut an app down."""
        for proc in self.procs:
            if proc.alive:
                proc.kill()
        while self.lives:
            await self.lives.pop().aclose()

    # ------------------------------------------------------------------ the workers

    async def start_worker(self) -> Actor:
        """Start a worker; return alice at the front door whose wake-ups reach it.

        PostgreSQL: a ``batchd worker`` process (front door: the fixture API, which
        enqueues into Redis). SQLite: a fresh app on the same database file, which
        resumes what it finds on start-up, then runs its recovery crons (front door:
        its own API)."""
        if ON_POSTGRES:
            self.procs.append(WorkerProcess(self.settings))
            return self.alice
        life = AsyncExitStack()
        self.lives.append(life)
        app = create_app(self.settings)
        await life.enter_async_context(app.router.lifespan_context(app))
        client = await life.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")
        )
        return Actor(self.alice.id, self.alice.token, client)

    async def start_process(self) -> tuple[Proc, Actor]:
        """A real process that runs jobs, ready, and alice at its front door:
        ``batchd worker`` (PostgreSQL + Redis) or ``batchd serve`` (SQLite)."""
        if ON_POSTGRES:
            worker = WorkerProcess(self.settings)
            self.procs.append(worker)
            await worker.ready()
            return worker, self.alice
        return await self.start_serve()

    async def start_serve(self) -> tuple[ServeProcess, Actor]:
        serve = ServeProcess(self.settings)
        self.procs.append(serve)
        await serve.ready()
        life = AsyncExitStack()
        self.lives.append(life)
        client = await life.enter_async_context(httpx.AsyncClient(base_url=serve.url, timeout=30))
        return serve, Actor(self.alice.id, self.alice.token, client)

    # ------------------------------------------------------------------ looking

    async def status(self, batch_id: int) -> dict[str, Any]:
        r = await self.alice.get(f"/api/v1/batches/{batch_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def frozen(self, batch_id: int) -> tuple[str, int]:
        """(batch status, details in success) without waiting on any lock: a stopped
        process may hold SQLite's write lock (every app transaction takes it)."""
        if ON_POSTGRES:
            async with self.sm() as s:
                status = await s.scalar(select(Batch.status).where(Batch.id == batch_id))
                done = await s.scalar(
                    select(func.count()).where(
                        BatchDetail.batch_id == batch_id, BatchDetail.status == "success"
                    )
                )
            return str(status), int(done or 0)
        path = make_url(self.settings.database_url).database
        assert path is not None
        # A plain WAL reader (no BEGIN IMMEDIATE): it never waits for the writer.
        with closing(sqlite3.connect(path, timeout=5)) as conn:
            (status,) = conn.execute(
                "SELECT status FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            (done,) = conn.execute(
                "SELECT count(*) FROM batch_details WHERE batch_id = ? AND status = 'success'",
                (batch_id,),
            ).fetchone()
        return str(status), int(done)

    def logs(self) -> str:
        return "\n".join(f"--- {type(p).__name__} log:\n{p.output()[-2000:]}" for p in self.procs)

    async def completes(self, batch_id: int, n: int, via: Actor | None = None) -> None:
        """The batch ends ``completed`` with all ``n`` items applied exactly once."""
        try:
            done = await wait_for(via or self.alice, batch_id, limit_s=RECOVERY_LIMIT_S)
        except AssertionError as exc:
            raise AssertionError(f"not recovered: {exc}\n{self.logs()}") from None
        assert (done["status"], done["success"], done["failed"]) == ("completed", n, 0), done
        await assert_applied_exactly_once(self.sm, self.task_ids, batch_id)


@pytest.fixture
async def rig(
    settings: Settings,
    app: FastAPI,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> AsyncIterator[Rig]:
    rig = Rig(settings, app, sessionmaker, admin, alice, bob)
    try:
        yield rig
    finally:
        while rig.lives:
            await rig.lives.pop().aclose()
        for proc in rig.procs:
            proc.stop()


def approve(**body: Any) -> dict[str, Any]:
    return {"type": "task.approve", "params": APPROVE, "chunk_size": CHUNK, **body}


# --------------------------------------------------------------------------- states


async def test_created_by_ids(rig: Rig) -> None:
    """a. ``created`` (id list: details and locks written at creation), no worker, its
    seed wake-up lost; a worker starts → completed."""
    ids = await rig.expense(N)
    batch = await create(rig.alice, approve(ids=ids))
    assert (batch["status"], batch["total"]) == ("created", N), batch
    await rig.lose_wakeups()
    assert (await rig.status(batch["id"]))["status"] == "created"
    await rig.start_worker()
    await rig.completes(batch["id"], N)


async def test_created_by_filter(rig: Rig) -> None:
    """b. ``created`` (filter: only counted, no details yet), no worker, its seed
    wake-up lost; a worker starts → completed."""
    await rig.expense(N)
    batch = await create(rig.alice, approve(filter=FILTER))
    assert (batch["status"], batch["total"]) == ("created", N), batch
    await rig.lose_wakeups()
    assert (await rig.status(batch["id"]))["status"] == "created"
    await rig.start_worker()
    await rig.completes(batch["id"], N)


async def test_seeding_half_way(rig: Rig) -> None:
    """c. ``seeding`` with one page of details written (the seed job run by hand, once:
    no execute job was ever enqueued), the rest of the wake-ups lost; a worker starts →
    completed."""
    from app.batches import seeding

    await rig.expense(N)
    batch = await create(rig.alice, approve(filter=FILTER))
    assert batch["status"] == "created", batch
    assert await seeding.seed_page(rig.app.state.jobs, batch["id"]) is not None
    assert (await rig.status(batch["id"]))["status"] == "seeding"
    seeded = len(await details(rig.alice, batch["id"]))
    assert 0 < seeded < N, seeded  # one page: CHUNK × JOBS_PER_SEED items
    await rig.lose_wakeups()
    await rig.start_worker()
    await rig.completes(batch["id"], N)


async def kill_mid_batch(rig: Rig) -> tuple[int, Proc]:
    """A real process runs an id-list batch; it is stopped once some chunks committed and
    the batch is ``running`` with items left, and SIGKILLed while stopped. Returns the
    batch id and the (dead) process."""
    ids = await rig.expense(N_KILLED)
    proc, front = await rig.start_process()
    batch = await create(front, approve(ids=ids))
    await proc.pause()  # it may have begun: a chunk or two at most

    async def progressed() -> bool:
        return (await rig.frozen(batch["id"]))[1] >= CHUNK

    await run_in_slices(proc.proc, progressed)
    status, done = await rig.frozen(batch["id"])
    assert status == "running" and CHUNK <= done < N_KILLED, (status, done)
    print(f"\n[crash] SIGKILL {type(proc).__name__} at {done} of {N_KILLED} items")
    proc.kill()
    return batch["id"], proc


async def test_running_worker_killed(rig: Rig) -> None:
    """d. ``running``: the worker is SIGKILLed mid-batch and every queued wake-up is
    lost; a new worker (SQLite: a fresh app on the file) starts → completed."""
    batch_id, _ = await kill_mid_batch(rig)
    await rig.lose_wakeups()
    await rig.start_worker()
    await rig.completes(batch_id, N_KILLED)


@pytest.mark.skipif(
    ON_POSTGRES, reason="with Redis, `batchd serve` runs no jobs: worker kills are state d"
)
async def test_running_serve_process_killed_and_restarted(rig: Rig) -> None:
    """d on the embedded default, all real: a batch started through the HTTP API of a
    ``batchd serve`` process, SIGKILL mid-batch, the same command started again on the
    same file → completed, exactly once."""
    batch_id, _ = await kill_mid_batch(rig)
    _, front = await rig.start_serve()
    await rig.completes(batch_id, N_KILLED, via=front)


@pytest.mark.parametrize("target", ["ids", "filter"])
async def test_suspended_then_activated(rig: Rig, target: str) -> None:
    """e. Created ``start_suspended`` (no worker), then activated (``running`` for an id
    list, ``seeding`` for a filter), its wake-ups lost; a worker starts → completed."""
    ids = await rig.expense(N)
    body = approve(
        start_suspended=True, **({"ids": ids} if target == "ids" else {"filter": FILTER})
    )
    batch = await create(rig.alice, body)
    assert batch["status"] == "suspended", batch
    if target == "ids":  # resolved and locked at creation, nothing applied
        assert len(await details(rig.alice, batch["id"], status="pending")) == N
        async with rig.sm() as s:
            locked = await s.scalar(
                select(func.count()).where(Task.locked_by_batch_id == batch["id"])
            )
        assert locked == N
    r = await rig.alice.post(f"/api/v1/batches/{batch['id']}/activate")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("created", "seeding", "running"), r.text
    await rig.lose_wakeups()
    await rig.start_worker()
    await rig.completes(batch["id"], N)


async def test_retried(rig: Rig) -> None:
    """f. A batch finished ``completed`` with failed items (their processes suspended);
    the worker is stopped, the cause fixed, the batch retried (``running`` again) and its
    wake-ups lost; a worker starts → completed, every item a success exactly once."""
    task_ids = await rig.expense(N)
    async with rig.sm() as s:
        broken = list(await s.scalars(select(Task.instance_id).where(Task.id.in_(task_ids[::10]))))
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id.in_(broken)).values(status="suspended")
        )
        await s.commit()
    front = await rig.start_worker()
    batch = await create(front, approve(filter=FILTER))
    first = await wait_for(rig.alice, batch["id"], limit_s=RECOVERY_LIMIT_S)
    assert (first["status"], first["success"], first["failed"]) == (
        "completed",
        N - len(broken),
        len(broken),
    ), first
    failed = await details(rig.alice, batch["id"], status="failed")
    assert all("not active" in (d["error"] or "") for d in failed), failed[:3]
    await rig.stop_workers()

    async with rig.sm() as s:
        await s.execute(
            update(ProcessInstance).where(ProcessInstance.id.in_(broken)).values(status="active")
        )
        await s.commit()
    r = await rig.alice.post(f"/api/v1/batches/{batch['id']}/retry")
    assert r.status_code in (200, 202), r.text
    assert (await rig.status(batch["id"]))["status"] == "running"
    await rig.lose_wakeups()
    await rig.start_worker()
    await rig.completes(batch["id"], N)


async def test_scheduled(rig: Rig) -> None:
    """g. ``scheduled`` (created with a ``start_at`` in the near future, no worker): the
    wake-ups are lost and ``start_at`` passes while nobody runs; a worker starts → its
    schedule cron moves the batch to ``created`` and seeds it (the filter is resolved
    then) → completed, exactly once."""
    from datetime import UTC, datetime, timedelta

    await rig.expense(N)
    start_at = datetime.now(UTC) + timedelta(seconds=1)
    batch = await create(rig.alice, approve(filter=FILTER, start_at=start_at.isoformat()))
    assert batch["status"] == "scheduled", batch
    await rig.lose_wakeups()
    await clock_passes(start_at)  # start_at passes while no worker runs
    assert (await rig.status(batch["id"]))["status"] == "scheduled"
    await rig.start_worker()
    await rig.completes(batch["id"], N)
