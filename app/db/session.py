"""Engine and session factories, and the two commit boundaries.

SQLite: aiosqlite with WAL and a busy timeout. Python's sqlite3 driver does not emit
BEGIN itself, which breaks SAVEPOINTs and transactional reads, so (as SQLAlchemy's
SQLite docs describe) the driver's own transaction handling is switched off and we emit
``BEGIN IMMEDIATE`` ourselves: every transaction takes the write lock up front, so two
writers queue on ``busy_timeout`` instead of failing with "database is locked" when a
reader upgrades to a writer.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000

ROW_PREFIX = r"^row [0-9]+(?: \((?:[^)]|\)[^:])*\))?: "
"""An imported row's "row 16: " or a zip's "row 3 (task-12.xlsx): " before its error
sentence: the one pattern both dialects use (Python's ``re`` and PostgreSQL's regular
expressions read it alike). The file name may hold parentheses; it ends at the first
"): ", which is where the reader's prefix ends."""
ROW_N = "row N: "

FAILURE_MESSAGE = "batchd_failure_message"
"""SQLite function ``batchd_failure_message(text, item_id)``: ``failure_message`` —
what PostgreSQL does with two ``regexp_replace`` of one match each
(``app/batches/failures.py``); SQLite has no regexp of its own."""


def failure_message(text: str | None, item_id: int | None) -> str | None:
    """A failure's sentence as its group knows it: an imported row's prefix as
    ``row N: `` and the first mention of the item's own id, as a whole word, as ``N``
    — so ``"row 16: Task 12 is locked by batch 12."`` of item 12 → ``"row N: Task N is
    locked by batch 12."`` (a sentence names its item once, before any other number;
    12 never matches inside 123)."""
    if text is None:
        return None
    text = re.sub(ROW_PREFIX, ROW_N, text, count=1)
    if item_id is None:
        return text
    return re.sub(rf"\b{int(item_id)}\b", "N", text, count=1)


def create_engine(url: str, *, pool_size: int = 10, name: str = "batchd") -> AsyncEngine:
    """``name`` becomes PostgreSQL's application_name (visible in pg_stat_activity)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": name}},
    )
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_S = 1.0
"""A pooled connection that sat unused longer than this is pinged before it is handed
out (see ``_ping_when_idle``)."""

_CHECKED_IN_AT = "batchd.checked_in_at"
"""Where a pooled connection's record keeps when it was last returned (or opened)."""


def _ping_when_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection that has been idle in
    the pool longer than ``PING_AFTER_IDLE_S``. asyncpg's ping is three round trips
    (BEGIN, an empty statement, ROLLBACK): on every checkout it was three of a GET's
    seven and a good share of a seed page's. A connection that died while idle — the
    server restarted, a proxy dropped it — has almost always been idle that long; one
    that died within the second fails its statement, which invalidates the whole pool
    (SQLAlchemy's disconnect handling), so only that one unit of work sees the error
    (a 503 to a client, a retry to a job)."""

    @event.listens_for(engine.sync_engine, "connect")
    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKED_IN_AT)
        if checked_in is not None and time.monotonic() - checked_in < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:  # the pool replaces it with a new connection
            raise DisconnectionError(str(exc)) from exc


def _sqlite_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(
        url, pool_size=5, max_overflow=5, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        dbapi_connection.create_function(FAILURE_MESSAGE, 2, failure_message, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(sm: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The job-side commit boundary: one unit of work, committed on success."""
    async with sm() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
