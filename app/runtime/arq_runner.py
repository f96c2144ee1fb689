"""The job table as arq runs it: one arq function per job and one ``unique`` arq cron
per cron, on one ``Worker`` per priority queue. ``workers/arq_worker.py`` supervises
these workers across Redis restarts; the adaptation itself lives here, once."""

from __future__ import annotations

from typing import Any

from arq import ArqRedis
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func

from app.runtime.backend import PRIORITIES, queue_name
from app.runtime.context import JobContext
from app.runtime.registry import Cron, Job, JobTable

JOB_TIMEOUT_S = 600
MAX_TRIES = 1000
CTX_KEY = "batchd"
"""Where the ``JobContext`` sits in the ctx dict arq hands every job."""
POLL_DELAY_S = 0.05
"""How often a worker looks for jobs enqueued by other processes (the API); the jobs a
worker enqueues itself start at once (``WorkerGroup.nudge``). Polling every 5 ms
instead was measured slower: the polls cost more than the wait they save."""


def arq_functions(table: JobTable) -> list[Function]:
    return [_arq_function(name, job) for name, job in table.jobs.items()]


def _arq_function(name: str, job: Job) -> Function:
    async def run(ctx: dict[str, Any], batch_id: int) -> None:
        await job(ctx[CTX_KEY], batch_id)

    run.__qualname__ = run.__name__ = name
    return func(run, name=name, timeout=JOB_TIMEOUT_S, max_tries=MAX_TRIES)


def arq_crons(table: JobTable) -> list[CronJob]:
    """The same schedule as the in-process runner, as ``unique`` arq crons (so several
    workers never run the same pass of a cron at the same moment), each also run at
    start-up: after a reconnect the recovery pass runs at once."""
    return [_arq_cron(entry) for entry in table.crons]


def _arq_cron(entry: Cron) -> CronJob:
    async def run(ctx: dict[str, Any]) -> None:
        await entry.run(ctx[CTX_KEY])

    second, minute = cron_times(entry.every_s)
    return cron(
        run,
        name=f"cron:{entry.name}",
        second=second,
        minute=minute,
        unique=True,
        run_at_startup=True,
        timeout=JOB_TIMEOUT_S,
    )


def cron_times(interval: float) -> tuple[set[int], set[int] | None]:
    """Every ``interval`` seconds as arq (second, minute) fields: whole seconds under a
    minute, whole minutes under an hour, else hourly."""
    if interval < 60:
        return set(range(0, 60, max(1, int(interval)))), None
    if interval < 3600:
        return {0}, set(range(0, 60, max(1, int(interval // 60))))
    return {0}, {0}


def arq_worker(table: JobTable, ctx: JobContext, pool: ArqRedis, priority: str) -> Worker:
    """A fresh arq worker for one priority's queue; the crons run on the first queue's
    worker only. Signals and reconnects are its supervisor's business."""
    return Worker(
        functions=arq_functions(table),
        cron_jobs=arq_crons(table) if priority == PRIORITIES[0] else None,
        queue_name=queue_name(priority),
        redis_pool=pool,
        ctx={CTX_KEY: ctx},
        max_jobs=ctx.settings.worker_max_jobs,
        job_timeout=JOB_TIMEOUT_S,
        keep_result=0,
        poll_delay=POLL_DELAY_S,
        handle_signals=False,
        log_results=False,
        max_tries=MAX_TRIES,
    )
