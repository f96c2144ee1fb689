"""Builds the process's job runtime from the settings: arq + Redis pub/sub when
``BATCH_REDIS_URL`` is set, otherwise the in-process runner + local broadcaster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.runtime.arq_backend import ArqQueue
from app.runtime.backend import QueueBackend
from app.runtime.context import JobContext
from app.runtime.inprocess import InProcessRunner
from app.runtime.progress import LocalProgressBus, RedisProgressBus


@dataclass
class Runtime:
    queue: QueueBackend
    progress: LocalProgressBus
    ctx: JobContext

    async def start(self) -> None:
        await self.progress.start()
        await self.queue.start()
        if isinstance(self.queue, InProcessRunner) and self.queue.run_jobs:
            from app.batches.jobs import resume_after_restart

            await resume_after_restart(self.ctx)

    async def stop(self) -> None:
        await self.queue.stop()
        await self.progress.stop()


def build_runtime(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    run_jobs: bool = True,
    listen_progress: bool = True,
) -> Runtime:
    from app import metrics
    from app.batches.jobs import JOBS, cron_schedule

    metrics.configure(enabled=settings.metrics)
    queue: QueueBackend
    progress: LocalProgressBus
    if settings.redis_url:
        queue = ArqQueue(settings.redis_url)
        progress = RedisProgressBus(settings.redis_url, listen=listen_progress)
    else:
        queue = InProcessRunner(
            JOBS, cron_schedule(settings), workers=settings.worker_max_jobs, run_jobs=run_jobs
        )
        progress = LocalProgressBus()
    ctx = JobContext(
        settings=settings,
        sessionmaker=sessionmaker,
        queue=queue,
        progress=progress,
        semaphore=asyncio.Semaphore(settings.max_concurrency),
    )
    if isinstance(queue, InProcessRunner):
        queue.bind(ctx)
    return Runtime(queue=queue, progress=progress, ctx=ctx)
