"""The runtime's three roles, as Protocols (the implementations satisfy them by shape,
none subclasses another):

- ``Broker`` carries wake-ups to whoever runs the jobs. Services never enqueue
  directly: they *request* a wake-up on the session (``request_wakeup``) and the
  commit boundary sends it after the commit succeeds, so a worker never wakes up for
  rows it cannot see yet.
- ``Runner`` runs the registered jobs (``JobTable``) and their crons.
- ``ProgressBus`` fans out "batch N changed" nudges to the event streams."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from app.domain import Wakeup

PRIORITIES = ("high", "normal", "low")


def queue_name(priority: str) -> str:
    return f"batchd:{priority}"


class Broker(Protocol):
    async def enqueue(self, wakeup: Wakeup) -> None:
        """Send one wake-up. Never raises for a broker outage: recovery re-sends."""
        ...

    async def depth(self) -> dict[str, int]:
        """Wake-ups waiting per priority (for ``GET /metrics``)."""
        ...

    async def ping(self) -> None:
        """Raise if the broker cannot be reached (readiness)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Runner(Protocol):
    async def start(self) -> None:
        """Start taking wake-ups and running the crons."""
        ...

    async def stop(self) -> None:
        """Graceful: running chunks finish (or roll back), nothing new is taken."""
        ...

    async def drained(self) -> None:
        """Return once no wake-up is due or running and no cron pass is under way:
        tests wait on it before asserting that nothing more happens."""
        ...


class ProgressBus(Protocol):
    async def publish(self, batch_id: int) -> None:
        """Nudge every listener of ``batch_id`` (in every process). Best effort."""
        ...

    def listen(self, batch_id: int) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set on each nudge for ``batch_id`` while the context is open."""
        ...

    def listener_count(self, batch_id: int | None = None) -> int:
        """Listeners of one batch, or of all: a closed stream must leave none behind."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
