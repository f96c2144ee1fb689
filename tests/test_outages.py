"""batchd outlives its infrastructure: Redis and PostgreSQL going down and coming back.

Every test that stops a server starts its own on a free port (``tests.outage_servers``),
never the shared one. What is asserted is what a user sees: batches that complete with
the right counts, worker processes still running (and stopping cleanly on SIGTERM), and
a JSON 503 with ``Retry-After`` from the API while the database is away — then 200s
again, from the same process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.migrate import upgrade_to_head
from app.db.session import create_engine
from tests.batch_helpers import create, details, eventually, expense_setup, get_batch, wait_for
from tests.conftest import ON_POSTGRES, Actor, LiveServer, _reset_postgres, postgres_only
from tests.outage_servers import PostgresServer, RedisServer
from tests.test_events import Reader
from tests.workers_proc import WorkerProcess

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}
FAST_RECOVERY: dict[str, Any] = {
    "stuck_after": 2,
    "start_timeout": 2,
    "recover_interval": 1,
    "slice_seconds": 1,
    "auto_retry_window": 0,
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """One throwaway cluster per module, migrated once (initdb takes about a second)."""
    server = PostgresServer.or_skip()
    try:
        await server.init()
        await server.start()
        engine = create_engine(server.url, pool_size=1)
        await upgrade_to_head(engine)
        await engine.dispose()
        yield server
    finally:
        await server.close()


@pytest.fixture
async def postgres_server(own_postgres: PostgresServer) -> PostgresServer:
    if not own_postgres.running:  # an earlier test failed while it was down
        await own_postgres.start()
    await _reset_postgres(own_postgres.url)
    return own_postgres


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer.or_skip()
    try:
        await server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Fast recovery, pointed at this test's own servers when it asks for them (and
    whatever an indirect parametrisation adds)."""
    overrides = {**FAST_RECOVERY, **getattr(request, "param", {})}
    if "redis_server" in request.fixturenames:
        overrides["redis_url"] = request.getfixturevalue("redis_server").url
    return overrides


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A directory standing for the volume that holds the embedded database file."""
    path = tmp_path / "volume"
    path.mkdir()
    return path


@pytest.fixture
def database_url(database_url: str, request: pytest.FixtureRequest) -> str:
    """This test's own PostgreSQL when it asks for one, the SQLite file moved into
    ``volume`` when it asks for that, else the suite's database."""
    if "postgres_server" in request.fixturenames:
        url: str = request.getfixturevalue("postgres_server").url
        return url
    if "volume" in request.fixturenames and database_url.startswith("sqlite"):
        prefix = "sqlite+aiosqlite:///"
        db_file = Path(database_url.removeprefix(prefix))
        moved = shutil.move(db_file, request.getfixturevalue("volume") / db_file.name)
        return f"{prefix}{moved}"
    return database_url


async def approve(actor: Actor, ids: list[int], chunk_size: int = 20) -> dict[str, Any]:
    return await create(
        actor, {"type": "task.approve", "ids": ids, "params": APPROVE, "chunk_size": chunk_size}
    )


async def completes(actor: Actor, batch_id: int, n: int, limit_s: float = 30) -> None:
    done = await wait_for(actor, batch_id, limit_s=limit_s)
    assert (done["status"], done["success"], done["failed"], done["total"]) == (
        "completed",
        n,
        0,
        n,
    ), done


async def under_way(actor: Actor, batch_id: int, applied: int) -> dict[str, Any]:
    """The batch once at least ``applied`` items succeeded: an outage after this point is
    a mid-batch one (the caller checks it was not already finished)."""
    return await eventually(
        lambda: get_batch(actor, batch_id),
        "the batch making progress",
        until=lambda b: b["success"] >= applied,
    )


def assert_applied_once(items: list[dict[str, Any]], task_ids: list[int]) -> None:
    """One ``success`` result per task, none missing, none twice."""
    assert sorted(i["item_id"] for i in items) == sorted(task_ids)
    assert {i["status"] for i in items} == {"success"}


def assert_unavailable(r: httpx.Response) -> dict[str, Any]:
    """The 503 every client sees while a dependency is away: JSON, retryable, and
    nothing about what failed inside."""
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert int(r.headers["retry-after"]) > 0
    body: dict[str, Any] = r.json()
    assert body["error"] == "Unavailable"
    assert body["detail"] and not any(
        word in body["detail"].lower()
        for word in ("postgres", "redis", "sqlite", "asyncpg", "error", "127.0.0.1", "errno")
    ), body
    return body


# --------------------------------------------------------------------------- Redis

SLOW_CRONS = pytest.mark.parametrize(
    "settings_overrides", [{"stuck_after": 600, "start_timeout": 600}], indirect=True
)
"""The recovery cron's timeouts far beyond the test: what completes after a Redis
restart was woken by the workers themselves on reconnecting, not by the cron."""


@postgres_only
@pytest.mark.external_workers
@SLOW_CRONS
async def test_workers_outlive_a_redis_restart(
    redis_server: RedisServer,
    workers: Callable[[], WorkerProcess],
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Redis restarted (every key lost) under two idle workers: the API takes a batch
    meanwhile, the workers reconnect by themselves, that batch and one created after
    the restart both complete, and the workers still stop cleanly on SIGTERM."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 200)
    pair = [workers(), workers()]
    for worker in pair:
        await worker.ready()

    await redis_server.shutdown()
    for worker in pair:
        await worker.logged("lost Redis")
    ready = await client.get("/ready")
    assert assert_unavailable(ready)["checks"] == {"database": "ok", "redis": "unavailable"}
    during = await approve(alice, setup.task_ids[:100])  # the database holds the work

    await redis_server.start()
    after = await approve(alice, setup.task_ids[100:])
    await completes(alice, after["id"], 100)
    await completes(alice, during["id"], 100)  # woken by the workers on reconnecting
    assert (await client.get("/ready")).status_code == 200

    for worker in pair:
        assert worker.alive, worker.output()
        assert await worker.terminate() == 0, worker.output()
        assert "shutting down" in worker.output()


@postgres_only
@pytest.mark.external_workers
@SLOW_CRONS
async def test_batch_outlives_a_redis_restart_mid_batch(
    redis_server: RedisServer,
    workers: Callable[[], WorkerProcess],
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Redis restarted while a worker is busy with a batch: the chunks in flight finish,
    the wake-ups Redis lost are re-sent once it is back, and the batch completes with
    every item applied once."""
    n = 3000
    setup = await expense_setup(sessionmaker, admin, alice, bob, n)
    worker = workers()
    await worker.ready()
    batch = await approve(alice, setup.task_ids, chunk_size=10)
    seen = await under_way(alice, batch["id"], 300)
    await redis_server.shutdown()
    assert seen["success"] < n, "stopped after the end: not a mid-batch outage"
    await worker.logged("lost Redis")
    await redis_server.start()

    await completes(alice, batch["id"], n)
    assert_applied_once(await details(alice, batch["id"]), setup.task_ids)
    assert worker.alive, worker.output()
    assert "never retrieved" not in worker.output()
    assert await worker.terminate() == 0, worker.output()


@postgres_only
@pytest.mark.external_workers
async def test_worker_exits_non_zero_when_redis_refuses_its_work(
    redis_server: RedisServer, workers: Callable[[], WorkerProcess]
) -> None:
    """Redis up but refusing writes (out of memory): waiting for it to come back would
    not help, so the worker says why and exits 1 for its supervisor to restart it,
    rather than staying alive and idle."""
    worker = workers()
    await worker.ready()
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.config_set("maxmemory", 1)
        await redis.config_set("maxmemory-policy", "noeviction")
    finally:
        await redis.aclose()

    async def exited() -> bool:
        return not worker.alive

    await eventually(exited, "the worker exiting")
    assert worker.proc.returncode == 1, worker.output()
    assert "exiting with status 1" in worker.output()


@postgres_only
@pytest.mark.external_workers  # one in-process worker group: the live server's
@pytest.mark.parametrize("settings_overrides", [{"poll_time": 60}], indirect=True)
async def test_progress_stream_goes_on_after_a_redis_restart(
    redis_server: RedisServer,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """An SSE stream opened before a Redis restart reports the batch's progress and
    end afterwards. The stream re-reads the batch only when nudged over Redis pub/sub
    (its fallback poll is set to a minute here), so the API's subscription and the
    in-process worker must both have come back for the batch to end in time."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 300)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        r = await http.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={
                "type": "task.approve",
                "ids": setup.task_ids,
                "params": APPROVE,
                "chunk_size": 10,
                "start_suspended": True,
            },
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        async with http.stream(
            "GET", f"/api/v1/batches/{batch_id}/events", headers=alice.headers
        ) as stream:
            reader = Reader(stream)
            first = await reader.next(10)
            assert first is not None and first["data"]["status"] == "suspended", first

            await redis_server.shutdown()
            await redis_server.start()
            r = await http.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
            assert r.status_code == 200, r.text

            events = [first]
            while (event := await reader.next(20)) is not None:
                events.append(event)
            await reader.close()
    assert events[-1]["event"] == "end", events[-3:]
    end = events[-1]["data"]
    assert (end["status"], end["success"], end["total"]) == ("completed", 300, 300)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.external_workers  # no jobs needed: this is about the API's answers
async def test_api_answers_503_while_postgres_is_down_then_recovers(
    postgres_server: PostgresServer, client: httpx.AsyncClient, alice: Actor
) -> None:
    """PostgreSQL stopped under a running API: JSON 503s with Retry-After (reads,
    writes, readiness), and 200s again from the same process once it is back."""
    assert (await alice.get("/api/v1/batches")).status_code == 200

    await postgres_server.stop()
    assert_unavailable(await alice.get("/api/v1/batches"))
    assert_unavailable(await alice.get("/api/v1/tasks?status=pending"))
    write = await alice.post(
        "/api/v1/batches", json={"type": "task.approve", "ids": [1], "params": APPROVE}
    )
    assert_unavailable(write)
    ready = assert_unavailable(await client.get("/ready"))
    assert ready["status"] == "unavailable" and ready["checks"]["database"] == "unavailable"
    assert (await client.get("/health")).status_code == 200  # alive, just not ready

    await postgres_server.start()

    async def answers_again() -> bool:
        return (await alice.get("/api/v1/batches")).status_code == 200

    await eventually(answers_again, "the API answering 200 after PostgreSQL came back")
    ready_again = await client.get("/ready")
    assert ready_again.status_code == 200 and ready_again.json()["checks"]["database"] == "ok"


@pytest.mark.skipif(ON_POSTGRES, reason="the embedded default is SQLite")
@pytest.mark.external_workers
async def test_embedded_database_out_of_reach_answers_503(
    volume: Path, tmp_path: Path, alice: Actor, client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The embedded default's database file out of reach (the directory holding it
    moved away, as when a volume is detached) once the pooled connections are gone:
    503 with Retry-After, and 200 again as soon as the file is back."""
    assert (await alice.get("/api/v1/batches")).status_code == 200
    elsewhere = tmp_path / "elsewhere"
    os.rename(volume, elsewhere)
    try:
        await app.state.engine.dispose()  # stands for the pooled connections being lost
        assert_unavailable(await alice.get("/api/v1/batches"))
        assert_unavailable(await client.get("/ready"))
    finally:
        os.rename(elsewhere, volume)
    assert (await alice.get("/api/v1/batches")).status_code == 200
    assert (await client.get("/ready")).status_code == 200


@postgres_only
@pytest.mark.external_workers
async def test_worker_outlives_a_postgres_restart_mid_batch(
    postgres_server: PostgresServer,
    workers: Callable[[], WorkerProcess],
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """PostgreSQL restarted while a worker runs a batch: the chunk in flight fails and
    rolls back, the worker keeps running, the batch completes with every item applied
    once, and a batch created afterwards completes too."""
    n = 2000
    setup = await expense_setup(sessionmaker, admin, alice, bob, n + 50)
    worker = workers()
    await worker.ready()
    batch = await approve(alice, setup.task_ids[:n], chunk_size=10)

    seen = await under_way(alice, batch["id"], 100)
    await postgres_server.stop()
    assert seen["success"] < n, "stopped after the end: not a mid-batch outage"
    await worker.logged("Connect call failed")  # its jobs and crons hit the outage
    assert_unavailable(await client.get("/ready"))
    await postgres_server.start()

    await completes(alice, batch["id"], n)
    after = await approve(alice, setup.task_ids[n:])
    await completes(alice, after["id"], 50)
    assert worker.alive, worker.output()
    assert await worker.terminate() == 0, worker.output()
