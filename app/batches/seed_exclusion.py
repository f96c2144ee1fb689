"""Serialising a batch's seed pages with its cancel or purge (the item locks an
operation may take live with the operation: ``app/operations/item_locks.py``)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_ADVISORY_NAMESPACE = 0x6264  # "bd": keeps batchd's advisory locks apart from others'


async def exclude_seeding(session: AsyncSession, batch_id: int) -> None:
    """Serialise a transaction that cancels, purges or finishes a batch with those that
    write its details (seed pages, ``share_seeding``), until the end of the transaction:
    otherwise a seed page committing meanwhile adds pending details (and task locks) that
    the cancel never saw. PostgreSQL: a transaction-level advisory lock. SQLite needs
    nothing: its writers (``BEGIN IMMEDIATE``) already run one at a time."""
    await _advisory(session, batch_id, "pg_advisory_xact_lock")


async def share_seeding(session: AsyncSession, batch_id: int) -> None:
    """Taken by a seed transaction (a claim or a page): seed lanes of one batch run side
    by side, but never beside a transaction that holds ``exclude_seeding``."""
    await _advisory(session, batch_id, "pg_advisory_xact_lock_shared")


async def _advisory(session: AsyncSession, batch_id: int, function: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text(f"SELECT {function}(CAST(:ns AS INTEGER), CAST(:key AS INTEGER))"),
            {"ns": _ADVISORY_NAMESPACE, "key": batch_id % 2_147_483_647},
        )
