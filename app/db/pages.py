"""Pagination: every list endpoint returns one page and the total it was cut from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


async def total_of(session: AsyncSession, stmt: Select[Any]) -> int:
    """How many rows ``stmt`` matches (its ORDER BY, OFFSET and LIMIT are ignored)."""
    counted = stmt.order_by(None).offset(None).limit(None).subquery()
    return int(await session.scalar(select(func.count()).select_from(counted)) or 0)


async def keyset_pages(
    sm: async_sessionmaker[AsyncSession], query: Select[Any], key: Any, page: int
) -> AsyncIterator[Sequence[Any]]:
    """The rows of ``query`` — whose first column is ``key`` — in ``key`` order, ``page``
    at a time, each page read in a short transaction of its own (keyset paging): an
    export of a million rows never holds a connection or a snapshot."""
    after = 0
    while True:
        async with sm() as session:
            rows = (await session.execute(query.where(key > after).order_by(key).limit(page))).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]
