"""Builds the process's job runtime from the settings, for ``batchd serve`` and
``batchd worker`` alike: arq + Redis pub/sub when ``BATCH_REDIS_URL`` is set (the API
only enqueues; ``batchd worker`` runs the jobs), otherwise the in-process broker and
runner + the local broadcaster."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from arq import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.config import Settings
from app.runtime.arq_backend import ArqQueue
from app.runtime.backend import Broker, ProgressBus, Runner
from app.runtime.context import JobContext
from app.runtime.inprocess import InProcessBroker, InProcessRunner
from app.runtime.progress import LocalProgressBus, RedisProgressBus
from app.runtime.registry import JobTable


@dataclass
class Runtime:
    broker: Broker
    progress: ProgressBus
    ctx: JobContext
    """What jobs and crons of this process receive."""
    runner: Runner | None
    """None when the jobs run elsewhere: on Redis, in ``batchd worker`` processes."""

    async def start(self) -> None:
        await self.progress.start()
        await self.broker.start()
        if self.runner is not None:
            await self.runner.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        await self.broker.stop()
        await self.progress.stop()


def build_runtime(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    table: JobTable,
    *,
    run_jobs: bool = True,
    listen_progress: bool = True,
    redis_pool: ArqRedis | None = None,
) -> Runtime:
    """``run_jobs=False`` keeps the in-process runner idle (tests that drive jobs by
    hand); ``listen_progress=False`` skips the progress subscription (a worker serves
    no streams); ``redis_pool`` is a worker's own arq pool, shared with its workers."""
    metrics.configure(enabled=settings.metrics)
    if settings.redis_url:
        broker = ArqQueue(settings.redis_url, pool=redis_pool)
        progress = RedisProgressBus(settings.redis_url, listen=listen_progress)
        ctx = _job_context(settings, sessionmaker, broker, progress)
        return Runtime(broker=broker, progress=progress, ctx=ctx, runner=None)
    in_process = InProcessBroker()
    local = LocalProgressBus()
    ctx = _job_context(settings, sessionmaker, in_process, local)
    runner = InProcessRunner(
        in_process, table, ctx, workers=settings.worker_max_jobs, run_jobs=run_jobs
    )
    return Runtime(broker=in_process, progress=local, ctx=ctx, runner=runner)


def _job_context(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    broker: Broker,
    progress: ProgressBus,
) -> JobContext:
    return JobContext(
        settings=settings,
        sessionmaker=sessionmaker,
        queue=broker,
        progress=progress,
        semaphore=asyncio.Semaphore(settings.max_concurrency),
    )
