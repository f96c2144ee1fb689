"""The unit of work shared by requests and jobs: one session, committed at the end,
and only then the queue wake-ups that the work requested (``request_wakeup``) are
sent — a worker never wakes for rows it cannot see yet, and a rolled-back unit sends
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.queue.backend import discard_wakeups

if TYPE_CHECKING:
    from app.queue.backend import QueueBackend


@asynccontextmanager
async def unit_of_work(
    sm: async_sessionmaker[AsyncSession], queue: QueueBackend
) -> AsyncIterator[AsyncSession]:
    async with sm() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            discard_wakeups(session)
            await session.rollback()
            raise
    await queue.send_wakeups(session)
