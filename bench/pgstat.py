"""Where PostgreSQL's time goes: per statement (``pg_stat_statements``) during one
measurement — calls, execution time, rows, shared blocks dirtied / written, WAL bytes.

The shared server usually does not load the extension (it needs
``shared_preload_libraries`` and a restart, which the bench never does to a server it
did not start). ``BENCH_PG_STATEMENTS=1`` makes the bench start its **own** PostgreSQL
15 cluster (``OwnCluster``: initdb in a temp dir, trust auth, a free loopback port, the
shared server's ``fsync`` / ``synchronous_commit`` / ``shared_buffers`` copied, the
extension preloaded), run everything on it, and stop and delete it at the end.
Without the extension the bench's own SQL trace (``BENCH_TRACE_SQL=1``) is the
fallback: client-side wall time per normalised statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
COPIED_SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "wal_level", "full_page_writes")

_SNAPSHOT = """
SELECT s.query, s.calls, s.total_exec_time, s.rows, s.shared_blks_hit, s.shared_blks_read,
       s.shared_blks_dirtied, s.shared_blks_written, s.wal_bytes
FROM pg_stat_statements s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND s.query NOT ILIKE '%pg_stat_statements%'
ORDER BY s.total_exec_time DESC
"""


@dataclass(frozen=True)
class Statement:
    query: str
    calls: int
    ms: float
    rows: int
    hit: int
    read: int
    dirtied: int
    written: int
    wal_bytes: int


@dataclass(frozen=True)
class Breakdown:
    """The statements of one measurement over ``items`` items."""

    name: str
    items: int
    statements: list[Statement]

    @property
    def total_ms(self) -> float:
        return sum(s.ms for s in self.statements)

    @property
    def us_per_item(self) -> float:
        return 1000 * self.total_ms / max(self.items, 1)

    def total(self, attr: str) -> int:
        return sum(int(getattr(s, attr)) for s in self.statements)

    def format(self, top: int = 12) -> str:
        total = self.total_ms or 1.0
        n = max(self.items, 1)
        lines = [
            f"PostgreSQL during {self.name} (pg_stat_statements, {self.items} items): "
            f"{self.total_ms / 1000:.2f}s execution = {self.us_per_item:.1f} µs/item; "
            f"WAL {self.total('wal_bytes') / n:.0f} B/item; "
            f"blocks dirtied {self.total('dirtied') / n:.2f}/item, "
            f"written by backends {self.total('written') / n:.3f}/item, "
            f"hit {self.total('hit') / n:.1f}/item, read {self.total('read') / n:.2f}/item",
            f"  {'share':>6} {'seconds':>8} {'calls':>8} {'µs/item':>8} {'rows':>9} "
            f"{'dirtied':>8} {'written':>8} {'WAL B/it':>8}  statement",
        ]
        for s in self.statements[:top]:
            lines.append(
                f"  {100 * s.ms / total:5.1f}% {s.ms / 1000:8.2f} {s.calls:8d} "
                f"{1000 * s.ms / n:8.1f} {s.rows:9d} {s.dirtied:8d} {s.written:8d} "
                f"{s.wal_bytes / n:8.0f}  {' '.join(s.query.split())[:140]}"
            )
        rest = self.statements[top:]
        if rest:
            lines.append(
                f"  {100 * sum(s.ms for s in rest) / total:5.1f}% "
                f"{sum(s.ms for s in rest) / 1000:8.2f} ({len(rest)} more statements)"
            )
        return "\n".join(lines)


class Statements:
    """``pg_stat_statements`` of the bench database, if the server preloads it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @classmethod
    async def open(cls, dsn: str) -> Statements | None:
        conn = await asyncpg.connect(dsn)
        try:
            loaded = str(await conn.fetchval("SHOW shared_preload_libraries"))
            if "pg_stat_statements" not in loaded:
                return None
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()
        return cls(dsn)

    async def reset(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()

    async def snapshot(self, name: str, items: int) -> Breakdown:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(_SNAPSHOT)
        finally:
            await conn.close()
        return Breakdown(
            name,
            items,
            [
                Statement(
                    r["query"],
                    int(r["calls"]),
                    float(r["total_exec_time"]),
                    int(r["rows"]),
                    int(r["shared_blks_hit"]),
                    int(r["shared_blks_read"]),
                    int(r["shared_blks_dirtied"]),
                    int(r["shared_blks_written"]),
                    int(r["wal_bytes"]),
                )
                for r in rows
            ],
        )


# --------------------------------------------------------------------------- own cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _shared_settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in COPIED_SETTINGS}
    finally:
        await conn.close()


def _run(args: list[str], user: str | None) -> None:
    cmd = (["runuser", "-u", user, "--"] if user else []) + args
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")


@contextlib.asynccontextmanager
async def own_cluster(shared_dsn: str) -> AsyncIterator[tuple[int, str]]:
    """A throw-away PostgreSQL 15 cluster with ``pg_stat_statements`` preloaded, the
    shared server's durability and memory settings, on a free loopback port: yields
    (port, settings note). As root, the server runs as the ``postgres`` user (initdb
    refuses root). Stopped and deleted on the way out."""
    settings = await _shared_settings(shared_dsn)
    user = "postgres" if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="batchd-bench-pg-"))
    data = tmp / "data"
    if user:
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    options = {
        **settings,
        "shared_preload_libraries": "pg_stat_statements",
        "pg_stat_statements.max": "10000",
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(tmp),
        "port": str(port),
    }
    started = False
    try:
        await asyncio.to_thread(
            _run,
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ],
            user,
        )
        with (data / "postgresql.auto.conf").open("a") as f:
            for key, value in options.items():
                f.write(f"{key} = '{value}'\n")
        await asyncio.to_thread(
            _run,
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log"), "-w", "start"],
            user,
        )
        started = True
        note = ", ".join(f"{k}={v}" for k, v in settings.items())
        yield port, note
    finally:
        if started:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    _run,
                    [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                    user,
                )
        shutil.rmtree(tmp, ignore_errors=True)
