"""The bench's own database (created if missing, dropped at the end) and Redis db
(flushed at start and end)."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from bench.config import BenchConfig


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(cfg: BenchConfig) -> None:
    """Create the bench database. A leftover one from an interrupted run is dropped
    first — but only if its name says it is a bench database, so pointing
    BENCH_DATABASE_URL at real data fails instead of destroying it."""
    name = cfg.database_name
    conn = await asyncpg.connect(cfg.asyncpg_dsn("postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            if "bench" not in name:
                raise SystemExit(
                    f"database {name!r} already exists and its name does not contain 'bench'; "
                    "the bench drops its database at the end, so it refuses to use this one"
                )
            await conn.execute(f"DROP DATABASE {_quote(name)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {_quote(name)}")
    finally:
        await conn.close()


async def drop_database(cfg: BenchConfig) -> None:
    conn = await asyncpg.connect(cfg.asyncpg_dsn("postgres"))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote(cfg.database_name)} WITH (FORCE)")
    finally:
        await conn.close()


async def flush_redis(url: str) -> None:
    redis = Redis.from_url(url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
