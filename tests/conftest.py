"""Test fixtures. The suite runs on SQLite + the in-process runner, or on PostgreSQL +
Redis + arq workers when BATCH_TEST_DATABASE_URL and BATCH_TEST_REDIS_URL are set.

Each test gets a clean database: on SQLite a copy of a migrated template file, on
PostgreSQL the migrated schema with every table truncated (and Redis flushed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches.jobs import job_table
from app.config import Settings
from app.db.base import Base
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine
from app.main import create_app
from app.workflow.users import create_user
from tests.workers_proc import WorkerProcess

TEST_DB = os.environ.get("BATCH_TEST_DATABASE_URL")
TEST_REDIS = os.environ.get("BATCH_TEST_REDIS_URL")
ON_POSTGRES = bool(TEST_DB and TEST_REDIS)
BACKEND = "postgresql+redis" if ON_POSTGRES else "sqlite"

postgres_only = pytest.mark.skipif(not ON_POSTGRES, reason="needs PostgreSQL + Redis workers")
"""For tests that run real ``batchd worker`` processes (the ``workers`` fixture)."""


def pytest_report_header() -> str:
    return f"batchd backend: {BACKEND}"


@pytest.fixture(scope="session")
async def template_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Migrate once per session: a template SQLite file, or the PostgreSQL schema."""
    if ON_POSTGRES:
        assert TEST_DB is not None
        engine = create_engine(TEST_DB, pool_size=2)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await upgrade_to_head(engine)
        await engine.dispose()
        yield TEST_DB
    else:
        path = tmp_path_factory.mktemp("template") / "template.db"
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        await upgrade_to_head(engine)
        await engine.dispose()
        yield str(path)


_LEFTOVER_WORK = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND state IS DISTINCT FROM 'idle' AND backend_type = 'client backend'"
)
"""A killed worker process's or a stopped test's statement can still be running in
PostgreSQL (a backend notices its client is gone only when it next talks to it): end
them so the next test's TRUNCATE neither waits on nor deadlocks with their locks. Idle
connections hold no locks and are left alone."""


async def _reset_postgres(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                await conn.execute(_LEFTOVER_WORK)
            async with engine.begin() as conn:
                await conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            break
        except DBAPIError:  # a deadlock or lock timeout with work that started meanwhile
            if attempt == 4:
                raise
    await engine.dispose()


async def _flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    await redis.flushdb()
    await redis.aclose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": TEST_REDIS if ON_POSTGRES else None,
        "poll_time": 0.2,
        "recover_interval": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with ``@pytest.mark.parametrize``) to tune Settings."""
    return {}


@pytest.fixture
async def database_url(template_db: str, tmp_path: Path) -> str:
    if ON_POSTGRES:
        await _reset_postgres(template_db)
        assert TEST_REDIS is not None
        await _flush_redis(TEST_REDIS)
        return template_db
    path = tmp_path / "batchd.db"
    shutil.copyfile(template_db, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def settings(database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    return make_settings(database_url, **settings_overrides)


@pytest.fixture
async def app(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[FastAPI]:
    """The API with its lifespan running; on Redis also one in-process arq worker
    (unless the test is marked ``external_workers``: it runs ``batchd worker`` itself)."""
    external = request.node.get_closest_marker("external_workers") is not None
    application = create_app(settings, run_jobs=not external)
    async with application.router.lifespan_context(application):
        if ON_POSTGRES and not external:
            from workers.arq_worker import WorkerGroup

            group = WorkerGroup(settings, job_table(settings))
            await group.start()
            application.state.test_workers = group  # for tests.batch_helpers.idle
            try:
                yield application
            finally:
                await group.stop()
        else:
            yield application


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[Callable[[], WorkerProcess]]:
    """Start real ``batchd worker`` processes on this test's settings (call it once per
    worker); every one still running is stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(WorkerProcess(settings))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
def sessionmaker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    """Direct database access for arranging data and asserting rows."""
    sm: async_sessionmaker[AsyncSession] = app.state.sessionmaker
    return sm


@dataclass
class Actor:
    """A user and an httpx client that authenticates as them."""

    id: int
    token: str
    client: httpx.AsyncClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    async def delete(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.delete(
            url, headers={**self.headers, **kw.pop("headers", {})}, **kw
        )


async def make_actor(
    sm: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    name: str,
    *,
    role: str = "user",
    department_id: int | None = None,
) -> Actor:
    async with sm() as session:
        user, token = await create_user(session, name, role=role, department_id=department_id)
        await session.commit()
    return Actor(id=user.id, token=token, client=client)


@pytest.fixture
async def admin(sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient) -> Actor:
    return await make_actor(sessionmaker, client, "Ada Admin", role="admin", department_id=1)


@pytest.fixture
async def alice(sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient) -> Actor:
    return await make_actor(sessionmaker, client, "Alice", department_id=10)


@pytest.fixture
async def bob(sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient) -> Actor:
    return await make_actor(sessionmaker, client, "Bob", department_id=20)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    app: FastAPI


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app under a real uvicorn server on a free loopback port (streams need it:
    httpx's ASGI transport buffers whole responses). On Redis, plus one arq worker."""
    import asyncio
    import contextlib

    import uvicorn

    application = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # keep pytest's
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    group = None
    if ON_POSTGRES:
        from workers.arq_worker import WorkerGroup

        group = WorkerGroup(settings, job_table(settings))
        await group.start()
        application.state.test_workers = group  # for tests.batch_helpers.idle
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", application)
    finally:
        if group is not None:
            await group.stop()
        server.should_exit = True
        await task
