"""Pagination: every list endpoint returns one page and the total it was cut from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession


async def total_of(session: AsyncSession, stmt: Select[Any]) -> int:
    """How many rows ``stmt`` matches (its ORDER BY, OFFSET and LIMIT are ignored)."""
    counted = stmt.order_by(None).offset(None).limit(None).subquery()
    return int(await session.scalar(select(func.count()).select_from(counted)) or 0)
