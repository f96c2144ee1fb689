"""The backend seam. Services never enqueue directly: they *request* a wake-up on the
session (``request_wakeup``) and the commit boundary sends the wake-ups after the
commit succeeds, so a worker never wakes up for rows it cannot see yet."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

PRIORITIES = ("high", "normal", "low")
_WAKEUPS = "batchd.wakeups"


def queue_name(priority: str) -> str:
    return f"batchd:{priority}"


@dataclass(frozen=True)
class Wakeup:
    """A queue message: a job name and a batch id, nothing else."""

    job: str
    batch_id: int
    priority: str = "normal"
    defer: float | None = None
    key: str | None = None
    """Dedupe key (arq ``_job_id``): a second wake-up with the same key is dropped."""


def request_wakeup(session: AsyncSession, wakeup: Wakeup) -> None:
    session.info.setdefault(_WAKEUPS, []).append(wakeup)


def take_wakeups(session: AsyncSession) -> list[Wakeup]:
    wakeups: list[Wakeup] = session.info.pop(_WAKEUPS, [])
    return wakeups


def discard_wakeups(session: AsyncSession) -> None:
    session.info.pop(_WAKEUPS, None)


class QueueBackend(abc.ABC):
    @abc.abstractmethod
    async def enqueue(self, wakeup: Wakeup) -> None:
        """Send one wake-up. Never raises for a broker outage: recovery re-sends."""

    async def send_wakeups(self, session: AsyncSession) -> None:
        for wakeup in take_wakeups(session):
            await self.enqueue(wakeup)

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the broker cannot be reached (readiness)."""
