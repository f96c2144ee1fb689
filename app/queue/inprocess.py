"""The embedded default's runner: the same job functions as the arq worker, on a
priority queue inside the API process, with the same cron schedule."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from app.queue.backend import PRIORITIES, QueueBackend, Wakeup
from app.queue.context import JobContext

log = logging.getLogger("batchd.runner")

Job = Callable[[JobContext, int], Awaitable[None]]
Cron = Callable[[JobContext], Awaitable[None]]


class InProcessRunner(QueueBackend):
    def __init__(
        self,
        jobs: dict[str, Job],
        crons: list[tuple[Cron, float]],
        *,
        workers: int,
        run_jobs: bool = True,
    ) -> None:
        self.jobs = jobs
        self.crons = crons
        self.workers = workers
        self.run_jobs = run_jobs
        self.ctx: JobContext | None = None
        self._queue: asyncio.PriorityQueue[tuple[int, int, Wakeup]] = asyncio.PriorityQueue()
        self._queued: set[str] = set()
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._busy = 0
        self._depth: Counter[str] = Counter()

    def bind(self, ctx: JobContext) -> None:
        self.ctx = ctx

    async def enqueue(self, wakeup: Wakeup) -> None:
        if wakeup.defer:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(wakeup.defer, self._put, wakeup)
            self._timers.add(handle)
        else:
            self._put(wakeup)

    def _put(self, wakeup: Wakeup) -> None:
        if wakeup.key is not None:
            if wakeup.key in self._queued:
                return
            self._queued.add(wakeup.key)
        rank = PRIORITIES.index(wakeup.priority) if wakeup.priority in PRIORITIES else 1
        self._queue.put_nowait((rank, next(self._seq), wakeup))
        self._depth[PRIORITIES[rank]] += 1

    async def depth(self) -> dict[str, int]:
        """Wake-ups waiting per priority (deferred ones count once they are due)."""
        return {p: self._depth[p] for p in PRIORITIES}

    async def start(self) -> None:
        if not self.run_jobs:
            return
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._consume(), name=f"batchd-runner-{i}"))
        for cron, interval in self.crons:
            self._tasks.append(asyncio.create_task(self._every(cron, interval)))

    async def stop(self) -> None:
        """Stop taking work; give in-flight chunks a moment to finish, then cancel.

        A cancelled chunk rolls back, so its items stay pending for the next start.
        """
        if self.ctx is not None:
            self.ctx.stopping.set()
        for handle in self._timers:
            handle.cancel()
        for _ in range(50):
            if self._busy == 0:
                break
            await asyncio.sleep(0.1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _consume(self) -> None:
        assert self.ctx is not None
        while True:
            rank, _, wakeup = await self._queue.get()
            self._depth[PRIORITIES[rank]] -= 1
            if wakeup.key is not None:
                self._queued.discard(wakeup.key)
            if self.ctx.stopping.is_set():
                continue
            self._busy += 1
            try:
                await self.jobs[wakeup.job](self.ctx, wakeup.batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s(%s) failed", wakeup.job, wakeup.batch_id)
            finally:
                self._busy -= 1

    async def _every(self, cron: Cron, interval: float) -> None:
        assert self.ctx is not None
        while not self.ctx.stopping.is_set():
            try:
                await cron(self.ctx)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cron %s failed", getattr(cron, "__name__", cron))
            await asyncio.sleep(interval)
