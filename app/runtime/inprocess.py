"""The embedded default's runner: the same job functions as the arq worker, on a
priority queue inside the API process, with the same cron schedule."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from app.domain import Wakeup
from app.runtime.backend import PRIORITIES, QueueBackend
from app.runtime.context import JobContext

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
        self._crons_busy = 0
        self._depth: Counter[str] = Counter()
        self._changed = asyncio.Event()
        """Set whenever work is queued or finishes; ``drained`` re-checks on it."""

    def bind(self, ctx: JobContext) -> None:
        self.ctx = ctx

    async def enqueue(self, wakeup: Wakeup) -> None:
        if wakeup.defer:
            loop = asyncio.get_running_loop()

            def due() -> None:
                self._timers.discard(handle)
                self._put(wakeup)

            handle = loop.call_later(wakeup.defer, due)
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
        self._changed.set()

    async def depth(self) -> dict[str, int]:
        """Wake-ups waiting per priority (deferred ones count once they are due)."""
        return {p: self._depth[p] for p in PRIORITIES}

    def _idle(self) -> bool:
        now = asyncio.get_running_loop().time()
        return (
            self._queue.empty()
            and self._busy == 0
            and self._crons_busy == 0
            and not any(h.when() <= now and not h.cancelled() for h in self._timers)
        )

    async def drained(self) -> None:
        """Return once the runner is idle: no wake-up queued, no job running and no cron
        pass under way, all at the same moment.

        A job that enqueues a follow-up does so before it returns, so the runner is not
        idle between the two. Deferred wake-ups that are not due yet do not count (they
        are future work, not pending work); one whose time has come counts as queued
        even if its timer has not fired yet. Crons count only while a pass runs: the
        wait between passes is idle, so ``drained`` does not promise that a cron ran
        (a test that needs a pass calls the cron itself). Without ``run_jobs`` nothing
        ever runs here, so the runner is idle at once. Used by tests to assert that
        nothing more happens, instead of sleeping."""
        if not self.run_jobs:
            return
        while not self._idle():
            self._changed.clear()
            if self._timers:  # a deferred wake-up falls due without any other event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)
            else:
                await self._changed.wait()

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
                self._changed.set()

    async def _every(self, cron: Cron, interval: float) -> None:
        assert self.ctx is not None
        while not self.ctx.stopping.is_set():
            self._crons_busy += 1
            try:
                await cron(self.ctx)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cron %s failed", getattr(cron, "__name__", cron))
            finally:
                self._crons_busy -= 1
                self._changed.set()
            await asyncio.sleep(interval)
