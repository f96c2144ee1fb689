"""The unit of work shared by requests and jobs: one session, committed at the end,
and only then the queue wake-ups that the work requested (``request_wakeup``) are
sent — a worker never wakes for rows it cannot see yet, and a rolled-back unit sends
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain import Wakeup

_WAKEUPS = "batchd.wakeups"


class WakeupSender(Protocol):
    """Whatever delivers wake-ups after the commit (the runtime's broker)."""

    async def enqueue(self, wakeup: Wakeup) -> None: ...


def request_wakeup(session: AsyncSession, wakeup: Wakeup) -> None:
    """Send ``wakeup`` once this session's unit of work has committed."""
    session.info.setdefault(_WAKEUPS, []).append(wakeup)


def take_wakeups(session: AsyncSession) -> list[Wakeup]:
    wakeups: list[Wakeup] = session.info.pop(_WAKEUPS, [])
    return wakeups


def discard_wakeups(session: AsyncSession) -> None:
    session.info.pop(_WAKEUPS, None)


async def send_wakeups(session: AsyncSession, sender: WakeupSender) -> None:
    for wakeup in take_wakeups(session):
        await sender.enqueue(wakeup)


@asynccontextmanager
async def unit_of_work(
    sm: async_sessionmaker[AsyncSession], queue: WakeupSender
) -> AsyncIterator[AsyncSession]:
    async with sm() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            discard_wakeups(session)
            await session.rollback()
            raise
    await send_wakeups(session, queue)
