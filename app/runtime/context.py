"""What every job receives: resources shared by all jobs of one process."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.runtime.backend import Broker, ProgressBus


@dataclass
class JobContext:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    queue: Broker
    progress: ProgressBus
    semaphore: asyncio.Semaphore
    """The coroutine cap: at most ``BATCH_MAX_CONCURRENCY`` chunks in flight per process."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on shutdown: executors finish their chunk and stop claiming."""

    def unit(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One unit of work: commit, then send the wake-ups it requested."""
        return unit_of_work(self.sessionmaker, self.queue)
