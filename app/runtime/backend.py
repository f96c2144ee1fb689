"""The backend seam. Services never enqueue directly: they *request* a wake-up on the
session (``request_wakeup``) and the commit boundary sends the wake-ups after the
commit succeeds, so a worker never wakes up for rows it cannot see yet."""

from __future__ import annotations

import abc

from app.domain import Wakeup

PRIORITIES = ("high", "normal", "low")


def queue_name(priority: str) -> str:
    return f"batchd:{priority}"


class QueueBackend(abc.ABC):
    @abc.abstractmethod
    async def enqueue(self, wakeup: Wakeup) -> None:
        """Send one wake-up. Never raises for a broker outage: recovery re-sends."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027 - optional hook
        pass

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the broker cannot be reached (readiness)."""
