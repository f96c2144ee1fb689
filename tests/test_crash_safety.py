"""Nothing lost, nothing applied twice — whatever dies.

On PostgreSQL + Redis these run real ``batchd worker`` processes and kill them, flush
Redis, and cut their database connections; on the embedded default the API process
itself is stopped mid-batch and started again. Recovery settings are shortened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import executor, seeding
from app.config import Settings
from app.main import create_app
from app.models import BatchDetail, ProcessInstance, ProcessLog, Task
from tests.batch_helpers import create, eventually, expense_setup, get_batch, wait_for
from tests.conftest import ON_POSTGRES, TEST_REDIS, Actor, postgres_only
from tests.workers_proc import WorkerProcess

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}
FILTER = {"definition_key": "expense", "node_id": "manager"}
FAST_RECOVERY: dict[str, Any] = {
    "stuck_after": 2,
    "start_timeout": 2,
    "recover_interval": 1,
    "slice_seconds": 1,
    "auto_retry_window": 0,
}
N = 3000


async def wait_until_success(actor: Actor, batch_id: int, at_least: int) -> dict[str, Any]:
    return await eventually(
        lambda: get_batch(actor, batch_id),
        f"batch {batch_id} reaches {at_least} successes",
        60,
        until=lambda b: b["success"] >= at_least or b["status"] in ("completed", "aborted"),
    )


def _none(n: int) -> bool:
    return n == 0


async def assert_applied_exactly_once(
    sm: async_sessionmaker[AsyncSession], task_ids: list[int], batch_id: int
) -> None:
    """Every manager task completed once: one finance task per instance, one log row per
    task, every detail success — none missing, none doubled."""
    async with sm() as s:
        completed = await s.scalar(
            select(func.count()).where(Task.id.in_(task_ids), Task.status == "completed")
        )
        per_instance = (
            await s.execute(
                select(Task.instance_id, func.count())
                .where(Task.node_id == "finance")
                .group_by(Task.instance_id)
            )
        ).all()
        logs = (
            await s.execute(
                select(ProcessLog.task_id, func.count())
                .where(ProcessLog.batch_id == batch_id, ProcessLog.action == "task.approved")
                .group_by(ProcessLog.task_id)
            )
        ).all()
        statuses = dict(
            (
                await s.execute(
                    select(BatchDetail.status, func.count())
                    .where(BatchDetail.batch_id == batch_id)
                    .group_by(BatchDetail.status)
                )
            ).all()
        )
    assert completed == len(task_ids)
    assert len(per_instance) == len(task_ids) and {n for _, n in per_instance} == {1}
    assert len(logs) == len(task_ids) and {n for _, n in logs} == {1}
    assert statuses == {"success": len(task_ids)}


async def start_batch(alice: Actor, chunk_size: int = 20) -> dict[str, Any]:
    return await create(
        alice,
        {"type": "task.approve", "filter": FILTER, "params": APPROVE, "chunk_size": chunk_size},
    )


async def finish(alice: Actor, batch_id: int, n: int = N) -> None:
    done = await wait_for(alice, batch_id, limit_s=120)
    assert (done["status"], done["success"], done["failed"]) == ("completed", n, 0), done


@dataclass
class Scene:
    sm: async_sessionmaker[AsyncSession]
    start_worker: Callable[[], WorkerProcess]
    alice: Actor
    task_ids: list[int]


@pytest.fixture
async def scene(
    sessionmaker: async_sessionmaker[AsyncSession],
    workers: Callable[[], WorkerProcess],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> Scene:
    setup = await expense_setup(sessionmaker, admin, alice, bob, N)
    return Scene(sessionmaker, workers, alice, setup.task_ids)


async def survive(
    scene: Scene, failure: Callable[[WorkerProcess], Awaitable[None]], at: tuple[int, ...] = (300,)
) -> WorkerProcess:
    """Run a batch on a real worker, inflict ``failure`` once ``at`` items succeeded,
    and check the batch still completes with every item applied exactly once."""
    worker = scene.start_worker()
    batch = await start_batch(scene.alice)
    for threshold in at:
        await wait_until_success(scene.alice, batch["id"], threshold)
        await failure(worker)
    await finish(scene.alice, batch["id"])
    await assert_applied_exactly_once(scene.sm, scene.task_ids, batch["id"])
    return worker


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_sigkill_worker_mid_batch(scene: Scene) -> None:
    async def kill_and_replace(worker: WorkerProcess) -> None:
        worker.kill()
        scene.start_worker()

    await survive(scene, kill_and_replace)


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_redis_flushall_mid_batch(scene: Scene) -> None:
    from redis.asyncio import Redis

    async def flushall(_worker: WorkerProcess) -> None:
        redis = Redis.from_url(TEST_REDIS or "")
        await redis.flushall()
        await redis.aclose()

    assert (await survive(scene, flushall)).alive


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_worker_survives_terminated_database_connections(scene: Scene) -> None:
    terminated: list[int] = []

    async def cut_connections(_worker: WorkerProcess) -> None:
        async with scene.sm() as s:
            rows = await s.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'batchd-worker' AND datname = current_database()"
                )
            )
            terminated.extend(1 for _ in rows)

    worker = await survive(scene, cut_connections, at=(300, 1200))
    assert terminated, "the worker had open connections to cut"
    assert worker.alive, worker.output()


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize(
    "settings_overrides",
    [{**FAST_RECOVERY, "stuck_after": 0.2, "slice_seconds": 0.2}],
)
async def test_two_workers_racing_recovery_never_double_apply(scene: Scene) -> None:
    """Both workers run a recovery pass every second that finds the batch "stuck"
    (heartbeat older than 0.2 s) and wakes yet more executors, each handing its batch
    back every 0.2 s: many executors on two processes race for the same chunks."""
    scene.start_worker(), scene.start_worker()
    batch = await start_batch(scene.alice, chunk_size=50)
    await finish(scene.alice, batch["id"])
    await assert_applied_exactly_once(scene.sm, scene.task_ids, batch["id"])


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_sigterm_finishes_the_chunk_and_exits(scene: Scene) -> None:
    """SIGTERM: the worker finishes what it holds and exits 0; nothing of it goes on
    afterwards (the counts stay still until a new worker starts)."""

    async def success_count() -> int | None:
        async with scene.sm() as s:
            return await s.scalar(select(func.count()).where(BatchDetail.status == "success"))

    async def worker_sessions() -> int:
        async with scene.sm() as s:
            query = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'batchd-worker'"
            )
            return int(await s.scalar(query) or 0)

    async def stop_gracefully(worker: WorkerProcess) -> None:
        assert await worker.terminate() == 0, worker.output()
        assert "shutting down" in worker.output()
        at_exit = await success_count()
        # Nothing of it may commit later: once PostgreSQL has closed every session of
        # the worker (it is the only one), the counts must not have moved.
        await eventually(worker_sessions, "the stopped worker's sessions close", until=_none)
        assert at_exit == await success_count()
        assert at_exit is not None and at_exit < N
        scene.start_worker()

    await survive(scene, stop_gracefully)


@postgres_only
@pytest.mark.external_workers
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_fused_suspend_survives_sigkill_with_two_workers(
    sessionmaker: async_sessionmaker[AsyncSession],
    workers: Callable[[], WorkerProcess],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """instance.suspend runs the fused one-statement chunk (claim + move + log + result):
    two workers race for its chunks, one is killed mid-batch and replaced, and every
    process is still suspended once, with one log row and one ``success`` detail each."""
    await expense_setup(sessionmaker, admin, alice, bob, N)
    victim, _other = workers(), workers()
    batch = await create(
        admin,
        {
            "type": "instance.suspend",
            "filter": {"definition_key": "expense", "status": "active"},
            "chunk_size": 20,
        },
    )
    seen = await wait_until_success(admin, batch["id"], 600)
    victim.kill()
    assert seen["success"] < N, "killed after the end: not a mid-batch crash"
    print(f"\n[crash] killed a worker at {seen['success']} of {N}")
    workers()
    done = await wait_for(admin, batch["id"], limit_s=120)
    assert (done["status"], done["success"], done["failed"], done["ignored"]) == (
        "completed",
        N,
        0,
        0,
    ), done
    async with sessionmaker() as s:
        suspended = await s.scalar(
            select(func.count()).where(ProcessInstance.status == "suspended")
        )
        logs = (
            await s.execute(
                select(ProcessLog.instance_id, func.count())
                .where(ProcessLog.batch_id == batch["id"])
                .group_by(ProcessLog.instance_id)
            )
        ).all()
        statuses = dict(
            (
                await s.execute(
                    select(BatchDetail.status, func.count())
                    .where(BatchDetail.batch_id == batch["id"])
                    .group_by(BatchDetail.status)
                )
            ).all()
        )
    assert suspended == N
    assert len(logs) == N and {n for _, n in logs} == {1}
    assert statuses == {"success": N}


@pytest.mark.skipif(ON_POSTGRES, reason="the embedded default is SQLite + in-process runner")
@pytest.mark.external_workers  # the fixture's own app runs no jobs: only the two lives do
@pytest.mark.parametrize("settings_overrides", [FAST_RECOVERY])
async def test_embedded_server_restart_mid_batch(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stop the API (and its runner) mid-batch, start a new one on the same file."""
    import httpx

    n = 2 * N
    setup = await expense_setup(sessionmaker, admin, alice, bob, n)
    # The runner applies thousands of items a second: rather than race it, the first
    # life's seed pages and chunks hang, before they start, once any item is applied;
    # only the lifespan's stop (cancelling them) ends them.
    hung = asyncio.Event()

    async def applied() -> int:
        async with sessionmaker() as s:
            done = select(func.count()).where(BatchDetail.status == "success")
            return await s.scalar(done) or 0

    def hangs_once_applied(real: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def first_life(*args: Any, **kwargs: Any) -> Any:
            if await applied():
                hung.set()
                await asyncio.Event().wait()
            return await real(*args, **kwargs)

        return first_life

    real_chunk, real_page = executor.run_next_chunk, seeding._seed_claimed
    monkeypatch.setattr(executor, "run_next_chunk", hangs_once_applied(real_chunk))
    monkeypatch.setattr(seeding, "_seed_claimed", hangs_once_applied(real_page))
    second_life = create_app(settings)
    first_life = create_app(settings)
    async with first_life.router.lifespan_context(first_life):
        transport = httpx.ASGITransport(app=first_life)
        async with httpx.AsyncClient(transport=transport, base_url="http://a") as c:
            alice_a = Actor(alice.id, alice.token, c)
            batch = await start_batch(alice_a, chunk_size=10)
            await asyncio.wait_for(hung.wait(), 30)  # the first life stops applying
    monkeypatch.setattr(executor, "run_next_chunk", real_chunk)
    monkeypatch.setattr(seeding, "_seed_claimed", real_page)
    async with sessionmaker() as s:
        stopped = await s.scalar(
            select(func.count()).where(
                BatchDetail.batch_id == batch["id"], BatchDetail.status == "success"
            )
        )
    assert stopped is not None and 0 < stopped < n, stopped
    print(f"\n[crash] stopped the embedded server at {stopped} of {n}")
    async with second_life.router.lifespan_context(second_life):
        transport = httpx.ASGITransport(app=second_life)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
            await finish(Actor(alice.id, alice.token, c), batch["id"], n)
    await assert_applied_exactly_once(sessionmaker, setup.task_ids, batch["id"])
