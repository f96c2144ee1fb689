"""``batchd worker``: three arq workers (one per priority queue) in one process, sharing
one database engine and one coroutine cap, plus the crons, supervised so that the
process outlives Redis restarts. Entry point and supervisor only: the runtime comes from
``app.runtime.factory.build_runtime``, the arq adaptation of the job table from
``app.runtime.arq_runner``, the jobs themselves from ``app.batches.jobs``.

With ``BATCH_WORKER_METRICS_PORT`` set (and ``BATCH_METRICS`` on) the process also
serves its own Prometheus ``/metrics`` (its chunks: items and durations) on that port:
one scrape target per worker, so no state is shared between processes or hosts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from arq import ArqRedis
from arq.worker import Worker
from prometheus_client import start_http_server
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.batches.jobs import job_table
from app.config import Settings
from app.db.session import create_engine, create_sessionmaker
from app.runtime.arq_backend import ArqQueue, connect
from app.runtime.arq_runner import arq_worker
from app.runtime.backend import PRIORITIES, queue_name
from app.runtime.factory import Runtime, build_runtime
from app.runtime.gc_tuning import tune_for_batches
from app.runtime.registry import JobTable

log = logging.getLogger("batchd.worker")

SHUTDOWN_GRACE_S = 20.0
RECONNECT_BASE_S = 0.1
RECONNECT_MAX_S = 2.0
"""Pauses between PINGs while Redis is down: doubling from 0.2 s, at most this long, so
a worker is back within about this long after Redis is."""
STILL_DOWN_LOG_S = 60.0
"""While Redis stays down, the worker says so again this often."""
STABLE_S = 30.0
"""A worker that ran this long before losing Redis is restarted without a pause."""
DRAIN_POLL_S = 0.05
"""How often ``drained`` looks at the queues again (arq has no idle hook)."""


def lost_redis(exc: BaseException) -> bool:
    """A failure that waiting for Redis cures: a refused, reset, timed-out or closed
    connection (redis-py raises its own ``ConnectionError``/``TimeoutError``; an
    ``OSError`` is what it does not wrap), also when redis-py reports it as another
    error raised while handling it (a ``WatchError`` for a connection lost during a
    ``WATCH``, as arq's job claim uses)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RedisConnectionError | RedisTimeoutError | OSError):
            return True
        pending += [current.__cause__, current.__context__]
    return False


class WorkerGroup:
    """The arq ``Runner`` (``app.runtime.backend``): one arq ``Worker`` per priority
    queue, so low-priority work never starves high.

    arq has no reconnect of its own: ``Worker.main`` ends with the first Redis command
    that fails, and a process whose workers ended would stay alive doing nothing. So
    each queue's worker runs under a supervisor (``_supervise``) that waits for Redis
    and starts a new worker; a failure that is not a lost connection is recorded in
    ``failure`` and ``run_forever`` exits non-zero, for a process supervisor to restart
    it. The database needs nothing of the kind: a job that fails on a lost connection
    fails alone, and the engine's pre-ping replaces dead pooled connections."""

    def __init__(self, settings: Settings, table: JobTable) -> None:
        assert settings.redis_url, "batchd worker needs BATCH_REDIS_URL"
        self.settings = settings
        self.table = table
        self.workers: dict[str, Worker] = {}
        """The live worker of each priority."""
        self.retired: list[Worker] = []
        """Workers whose loop ended on a lost connection while jobs of theirs ran on."""
        self.tasks: list[asyncio.Task[None]] = []
        """One supervisor per priority."""
        self.pool: ArqRedis | None = None
        self.runtime: Runtime | None = None
        self.metrics_server: MetricsServer | None = None
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        """Set when a worker died of something waiting for Redis cannot cure."""
        self._probe = asyncio.Lock()
        self._nudges: set[asyncio.Task[None]] = set()
        """Job starts under way (``nudge``), kept until done."""

    async def start(self, *, serve_metrics: bool = False) -> None:
        """``serve_metrics``: also start the metrics HTTP server when a port is set
        (``run_forever`` does; in-process test workers share the API's ``/metrics``).
        Does not wait for Redis: each supervisor does, and says so in the log."""
        s = self.settings
        assert s.redis_url is not None
        self.engine = create_engine(s.database_url, pool_size=s.db_pool_size, name="batchd-worker")
        self.pool = connect(s.redis_url)
        self.runtime = build_runtime(
            s,
            create_sessionmaker(self.engine),
            self.table,
            listen_progress=False,  # a worker serves no event streams
            redis_pool=self.pool,
        )
        await self.runtime.start()
        if isinstance(self.runtime.ctx.queue, ArqQueue):
            self.runtime.ctx.queue.on_enqueued = self.nudge
        if serve_metrics and s.metrics and s.worker_metrics_port is not None:
            self.metrics_server = MetricsServer(s.worker_metrics_host, s.worker_metrics_port)
        for priority in PRIORITIES:
            supervisor = asyncio.create_task(self._supervise(priority), name=f"arq-{priority}")
            self.tasks.append(supervisor)

    def _new_worker(self, priority: str) -> Worker:
        """A fresh arq worker for one queue. The crons (on the first queue's worker) are
        new too, and ``run_at_startup``: after a reconnect the recovery pass runs at
        once and re-sends whatever wake-ups a Redis restart lost."""
        assert self.pool is not None and self.runtime is not None
        return arq_worker(self.table, self.runtime.ctx, self.pool, priority)

    def nudge(self, queue: str, job_id: str) -> None:
        """Start a job this process just enqueued to run now (a seed lane, an executor, a
        seed job's next slice) on its queue's worker at once instead of at that worker's
        next poll, up to ``arq_runner.POLL_DELAY_S`` later. arq's own claim of a job (its
        in-progress key, set under WATCH) keeps it from starting twice, here or in
        another process; a worker with no free slot is left to its poll."""
        if self.runtime is None or self.runtime.ctx.stopping.is_set():
            return
        for worker in self.workers.values():
            if worker.queue_name != queue:
                continue
            if worker.allow_pick_jobs and worker.job_counter < worker.max_jobs:
                task = asyncio.create_task(worker.start_jobs([job_id.encode()]))
                self._nudges.add(task)
                task.add_done_callback(self._nudged)
            return

    def _nudged(self, task: asyncio.Task[None]) -> None:
        """A failed start (Redis went away) is harmless: the job stays queued for the
        worker's poll, or for the worker that replaces it."""
        self._nudges.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            log.debug("starting a job at once failed: %s", describe(failure))

    async def drained(self) -> None:
        """Return once no arq queue holds a due job and no worker has a job task in
        flight (``Runner.drained``; arq has no such hook, so this polls).

        arq keeps a job in its queue's sorted set until the job has finished (the
        in-progress key only marks it taken), and a job enqueues its follow-ups before it
        returns, so an empty snapshot of every queue (one MULTI, so all queues at the
        same instant) means no work is waiting or running; the workers' ``tasks`` are
        checked too for a job whose bookkeeping is still finishing. Jobs deferred to a
        later time do not count, and crons only while due or running."""
        assert self.pool is not None
        while True:
            now_ms = int(time.time() * 1000)
            async with self.pool.pipeline(transaction=True) as pipe:
                for priority in PRIORITIES:
                    pipe.zcount(queue_name(priority), "-inf", now_ms)
                due = await pipe.execute()
            workers = [*self.workers.values(), *self.retired]
            running = any(not t.done() for w in workers for t in w.tasks.values())
            if not any(due) and not running:
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def _supervise(self, priority: str) -> None:
        """Run one queue's worker for as long as the group runs, replacing it whenever
        it ends on a lost Redis connection. A worker that dies again at once (Redis
        answers PING but not the worker's commands) is restarted after a growing pause."""
        assert self.runtime is not None
        ctx = self.runtime.ctx
        backoff = ExponentialBackoff(cap=RECONNECT_MAX_S, base=RECONNECT_BASE_S)
        quick_deaths = 0
        reconnecting = False
        while True:
            await self._wait_for_redis()
            if reconnecting and priority == PRIORITIES[0]:
                await self._resume_lost_work()
            reconnecting = True
            worker = self._new_worker(priority)
            self.workers[priority] = worker
            started = asyncio.get_running_loop().time()
            try:
                await worker.async_run()
                raise RuntimeError("the arq worker stopped by itself")
            except Exception as exc:
                if ctx.stopping.is_set():
                    return
                self._retire(worker)
                if not lost_redis(exc):
                    self._fail(priority, exc)
                    return
                log.warning(
                    "queue %s lost Redis (%s); restarting its worker once Redis answers",
                    queue_name(priority),
                    describe(exc),
                )
            ran_for = asyncio.get_running_loop().time() - started
            quick_deaths = quick_deaths + 1 if ran_for < STABLE_S else 0
            if quick_deaths > 1:
                await asyncio.sleep(backoff.compute(quick_deaths))

    async def _resume_lost_work(self) -> None:
        """After Redis came back: wake every unfinished batch for the state it is in, at
        once, instead of leaving the wake-ups a restart lost to the recovery cron's
        timeouts (minutes). Jobs are idempotent and wake-ups keyed, so several workers
        doing this together cost duplicates, never double work."""
        assert self.runtime is not None
        try:
            await self.table.on_start(self.runtime.ctx)
        except Exception as exc:  # the database may be away too: the crons catch up
            log.warning("could not wake unfinished batches after reconnecting: %s", describe(exc))

    async def _wait_for_redis(self) -> None:
        """Return once Redis answers PING, retrying with redis-py's ``Retry`` (doubling
        pauses up to ``RECONNECT_MAX_S``, forever). One supervisor probes; the others
        wait for it and then find Redis up with a single PING."""
        assert self.pool is not None
        pool = self.pool
        loop = asyncio.get_running_loop()
        down_since: float | None = None
        said_at: float | None = None

        async def still_down(exc: Exception) -> None:
            nonlocal down_since, said_at
            now = loop.time()
            down_since = now if down_since is None else down_since
            if said_at is None or now - said_at >= STILL_DOWN_LOG_S:
                said_at = now
                waited = now - down_since
                log.warning("Redis unreachable for %.0f s (%s); waiting for it", waited, exc)

        retry = Retry(
            ExponentialBackoff(cap=RECONNECT_MAX_S, base=RECONNECT_BASE_S),
            -1,
            supported_errors=(RedisConnectionError, RedisTimeoutError),
        )
        async with self._probe:
            await retry.call_with_retry(pool.ping, still_down)
        if down_since is not None:
            log.info("Redis answers again (after %.1f s)", loop.time() - down_since)

    def _retire(self, worker: Worker) -> None:
        """A worker whose loop ended may still run jobs: their chunks commit in the
        database, not in Redis, so they are left to finish (``stop`` waits for them).
        Their own report to Redis may fail; that result is read here, not left for
        asyncio to log as never retrieved."""
        worker.allow_pick_jobs = False
        for task in worker.tasks.values():
            task.add_done_callback(_read_result)
        self.retired = [w for w in self.retired if _running(w)]
        if _running(worker):
            self.retired.append(worker)

    def _fail(self, priority: str, exc: BaseException) -> None:
        log.error(
            "queue %s: the arq worker failed (%s) and cannot be restarted in this process",
            queue_name(priority),
            describe(exc),
            exc_info=exc,
        )
        if self.failure is None:
            self.failure = exc
        self.failed.set()

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Graceful: stop picking jobs, let running chunks finish (they stop claiming when
        ``ctx.stopping`` is set), then cancel whatever is left (it rolls back)."""
        if self.runtime is not None:
            self.runtime.ctx.stopping.set()
        workers = [*self.workers.values(), *self.retired]
        for worker in workers:
            worker.allow_pick_jobs = False
        for nudge in list(self._nudges):
            nudge.cancel()
        in_flight = [t for w in workers for t in w.tasks.values() if not t.done()]
        if in_flight:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(in_flight))
            _done, late = await asyncio.wait(in_flight, timeout=grace)
            if late:
                log.warning("cancelling %d jobs still running after %.0f s", len(late), grace)
        for worker in workers:
            for t in worker.tasks.values():
                t.cancel()
            if worker.main_task is not None:
                worker.main_task.cancel()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.runtime is not None:
            await self.runtime.stop()
        if self.pool is not None:
            await self.pool.aclose()
        await self.engine.dispose()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None


def describe(exc: BaseException, limit: int = 200) -> str:
    """``Class: message`` for a log line, cut short and printable: a failed pipeline's
    message quotes the whole command, pickled job included."""
    text = str(exc)
    if not text.isprintable():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > limit:
        text = text[:limit] + "…"
    return f"{exc.__class__.__name__}: {text}"


def _running(worker: Worker) -> bool:
    return any(not t.done() for t in worker.tasks.values())


def _read_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a job of a retired worker ended with %r", task.exception())


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
    """Run until SIGTERM/SIGINT, then shut down gracefully. If a queue's worker fails in
    a way this process cannot cure, shut down the same way and exit with status 1, so
    that a process supervisor (systemd, Docker, Kubernetes) starts a fresh one."""
    group = WorkerGroup(settings, job_table(settings))
    await group.start(serve_metrics=True)
    tune_for_batches()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("batchd worker serving %s", ", ".join(queue_name(p) for p in PRIORITIES))
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(group.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if group.failed.is_set():
        failure = describe(group.failure) if group.failure else "unknown failure"
        log.error("batchd worker exiting with status 1: %s", failure)
        await group.stop()
        raise SystemExit(1)
    log.info("shutting down: finishing in-flight chunks")
    await group.stop()
