"""The connection pool pings a PostgreSQL connection before handing it out only when it
sat idle (``app.db.session._ping_when_idle``): a connection that died while idle is
replaced without the caller seeing it, and one that was returned a moment ago costs no
round trips."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import session as db_session
from app.db.session import create_engine
from tests.conftest import TEST_DB, postgres_only

pytestmark = postgres_only


async def _backend_pid(engine: AsyncEngine) -> int:
    """The server process behind the connection the pool hands out now."""
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_backend_pid()")))


async def test_a_connection_that_died_while_idle_is_replaced_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert TEST_DB is not None
    engine = create_engine(TEST_DB, pool_size=1, name="batchd-pool-test")
    other = create_engine(TEST_DB, pool_size=1)
    try:
        pid = await _backend_pid(engine)
        async with other.begin() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # it has been idle "long"
        assert await _backend_pid(engine) != pid  # no error: the ping found it dead
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_connection_returned_a_moment_ago_is_not_pinged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert TEST_DB is not None
    pings: list[int] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counting_ping(self: AsyncAdapt_asyncpg_connection) -> None:
        pings.append(1)
        ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting_ping)
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 60.0)
    engine = create_engine(TEST_DB, pool_size=1)
    try:
        pids = {await _backend_pid(engine) for _ in range(5)}
        assert (len(pids), len(pings)) == (1, 0)  # one connection, reused, never pinged
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)
        await _backend_pid(engine)
        assert len(pings) == 1  # idle "long": pinged once before it was handed out
    finally:
        await engine.dispose()
