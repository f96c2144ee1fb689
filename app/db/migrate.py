"""Run Alembic migrations from inside the app (``batchd migrate``, embedded start-up,
test set-up) on an existing async engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


async def upgrade_to_head(engine: AsyncEngine) -> None:
    await upgrade_to(engine, "head")


async def upgrade_to(engine: AsyncEngine, revision: str) -> None:
    """Upgrade to ``revision`` (tests build databases of earlier revisions with it)."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.connect() as connection, _sqlite_foreign_keys_off(connection):
        await connection.run_sync(_upgrade)
        await connection.commit()


@asynccontextmanager
async def _sqlite_foreign_keys_off(connection: AsyncConnection) -> AsyncIterator[None]:
    """SQLite migrations rebuild tables (copy, drop, rename), and with foreign keys on,
    dropping a parent table deletes its children (ON DELETE CASCADE). The pragma only
    works outside a transaction, so it is set on the driver's connection before the
    migration begins one, and set back before the connection returns to the pool."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        await connection.rollback()  # a failed upgrade's transaction: the pragma needs none
        await driver.execute("PRAGMA foreign_keys=ON")
