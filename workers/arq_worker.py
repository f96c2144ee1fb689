"""``batchd worker``: three arq workers (one per priority queue) in one process, sharing
one database engine and one coroutine cap, plus the crons. Wiring only: the job
functions live in ``app.batches.jobs``.

With ``BATCH_WORKER_METRICS_PORT`` set (and ``BATCH_METRICS`` on) the process also
serves its own Prometheus ``/metrics`` (its chunks: items and durations) on that port:
one scrape target per worker, so no state is shared between processes or hosts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from arq import ArqRedis, create_pool
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func
from prometheus_client import start_http_server

from app import metrics
from app.batches.jobs import JOBS, cron_schedule
from app.config import Settings
from app.db.session import create_engine, create_sessionmaker
from app.queue.arq_backend import ArqQueue, redis_settings
from app.queue.backend import PRIORITIES, queue_name
from app.queue.context import JobContext
from app.queue.gc_tuning import tune_for_batches
from app.queue.progress import RedisProgressBus

log = logging.getLogger("batchd.worker")

JOB_TIMEOUT_S = 600
SHUTDOWN_GRACE_S = 20.0


def _arq_function(name: str) -> Function:
    job = JOBS[name]

    async def run(ctx: dict[str, Any], batch_id: int) -> None:
        await job(ctx["batchd"], batch_id)

    run.__qualname__ = run.__name__ = name
    return func(run, name=name, timeout=JOB_TIMEOUT_S, max_tries=1000)


def _arq_crons(settings: Settings) -> list[CronJob]:
    """The same schedule as the in-process runner, as ``unique`` arq crons (so several
    workers never run the same pass of a cron at the same moment)."""
    crons = []
    for job, interval in cron_schedule(settings):

        async def run(
            ctx: dict[str, Any], _job: Callable[[JobContext], Awaitable[None]] = job
        ) -> None:
            await _job(ctx["batchd"])

        second, minute = _cron_times(interval)
        crons.append(
            cron(
                run,
                name=f"cron:{getattr(job, '__name__', 'cron')}",
                second=second,
                minute=minute,
                unique=True,
                run_at_startup=True,
                timeout=JOB_TIMEOUT_S,
            )
        )
    return crons


def _cron_times(interval: float) -> tuple[set[int], set[int] | None]:
    """Every ``interval`` seconds as arq (second, minute) fields: whole seconds under a
    minute, whole minutes under an hour, else hourly."""
    if interval < 60:
        return set(range(0, 60, max(1, int(interval)))), None
    if interval < 3600:
        return {0}, set(range(0, 60, max(1, int(interval // 60))))
    return {0}, {0}


class WorkerGroup:
    """One arq ``Worker`` per priority queue, so low-priority work never starves high."""

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url, "batchd worker needs BATCH_REDIS_URL"
        self.settings = settings
        self.workers: list[Worker] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.pool: ArqRedis | None = None
        self.ctx: JobContext | None = None
        self.metrics_server: MetricsServer | None = None

    async def start(self, *, serve_metrics: bool = False) -> None:
        """``serve_metrics``: also start the metrics HTTP server when a port is set
        (``run_forever`` does; in-process test workers share the API's ``/metrics``)."""
        s = self.settings
        assert s.redis_url is not None
        metrics.configure(enabled=s.metrics)
        if serve_metrics and s.metrics and s.worker_metrics_port is not None:
            self.metrics_server = MetricsServer(s.worker_metrics_host, s.worker_metrics_port)
        self.engine = create_engine(s.database_url, pool_size=s.db_pool_size, name="batchd-worker")
        self.pool = await create_pool(redis_settings(s.redis_url))
        self.progress = RedisProgressBus(s.redis_url, listen=False)
        self.ctx = JobContext(
            settings=s,
            sessionmaker=create_sessionmaker(self.engine),
            queue=ArqQueue(s.redis_url, pool=self.pool),
            progress=self.progress,
            semaphore=asyncio.Semaphore(s.max_concurrency),
        )
        functions = [_arq_function(name) for name in JOBS]
        for i, priority in enumerate(PRIORITIES):
            worker = Worker(
                functions=functions,
                cron_jobs=_arq_crons(s) if i == 0 else None,
                queue_name=queue_name(priority),
                redis_pool=self.pool,
                ctx={"batchd": self.ctx},
                max_jobs=s.worker_max_jobs,
                job_timeout=JOB_TIMEOUT_S,
                keep_result=0,
                poll_delay=0.05,
                handle_signals=False,
                log_results=False,
                max_tries=1000,
            )
            self.workers.append(worker)
            self.tasks.append(asyncio.create_task(worker.async_run(), name=f"arq-{priority}"))

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Graceful: stop picking jobs, let running chunks finish (they stop claiming when
        ``ctx.stopping`` is set), then cancel whatever is left (it rolls back)."""
        if self.ctx is not None:
            self.ctx.stopping.set()
        for worker in self.workers:
            worker.allow_pick_jobs = False
        in_flight = [t for w in self.workers for t in w.tasks.values() if not t.done()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=grace)
        for worker in self.workers:
            for t in worker.tasks.values():
                t.cancel()
            if worker.main_task is not None:
                worker.main_task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.progress.stop()
        if self.pool is not None:
            await self.pool.aclose()
        await self.engine.dispose()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None


class MetricsServer:
    """prometheus-client's HTTP server (a daemon thread) on the worker's own port."""

    def __init__(self, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host)
        self.port = int(self.server.server_address[1])
        log.info("batchd worker metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def run_forever(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    group = WorkerGroup(settings)
    await group.start(serve_metrics=True)
    tune_for_batches()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("batchd worker serving %s", ", ".join(queue_name(p) for p in PRIORITIES))
    await stop.wait()
    log.info("shutting down: finishing in-flight chunks")
    await group.stop()
