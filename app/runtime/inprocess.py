"""The embedded default: a ``Broker`` (a priority queue inside the API process) and a
``Runner`` that takes from it and runs the same job table and cron schedule as the arq
worker does."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter

from app.domain import Wakeup
from app.runtime.backend import PRIORITIES
from app.runtime.context import JobContext
from app.runtime.registry import Cron, JobTable

log = logging.getLogger("batchd.runner")


class InProcessBroker:
    """Wake-ups by priority, deduplicated by key while queued; a deferred wake-up
    joins the queue when its timer fires."""

    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[tuple[int, int, Wakeup]] = asyncio.PriorityQueue()
        self._queued: set[str] = set()
        self._seq = itertools.count()
        self._timers: set[asyncio.TimerHandle] = set()
        self._depth: Counter[str] = Counter()
        self.changed = asyncio.Event()
        """Set whenever work is queued or (by the runner) finishes: ``drained`` re-checks."""

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
        self.changed.set()

    async def take(self) -> Wakeup:
        """The next wake-up, highest priority first; its key may be queued again."""
        rank, _, wakeup = await self._queue.get()
        self._depth[PRIORITIES[rank]] -= 1
        if wakeup.key is not None:
            self._queued.discard(wakeup.key)
        return wakeup

    async def depth(self) -> dict[str, int]:
        """Wake-ups waiting per priority (deferred ones count once they are due)."""
        return {p: self._depth[p] for p in PRIORITIES}

    def waiting(self) -> bool:
        """A wake-up is queued, or deferred and due (its timer may not have fired yet)."""
        now = asyncio.get_running_loop().time()
        due = any(h.when() <= now and not h.cancelled() for h in self._timers)
        return not self._queue.empty() or due

    def deferring(self) -> bool:
        """A deferred wake-up will join the queue later, without any other event."""
        return bool(self._timers)

    async def ping(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()


class InProcessRunner:
    """``workers`` consumers on an ``InProcessBroker``, plus one loop per cron."""

    def __init__(
        self,
        broker: InProcessBroker,
        table: JobTable,
        ctx: JobContext,
        *,
        workers: int,
        run_jobs: bool = True,
    ) -> None:
        self.broker = broker
        self.table = table
        self.ctx = ctx
        self.workers = workers
        self.run_jobs = run_jobs
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._crons_busy = 0

    def _idle(self) -> bool:
        return not self.broker.waiting() and self._busy == 0 and self._crons_busy == 0

    async def drained(self) -> None:
        """Return once the runner is idle: no wake-up queued, no job running and no cron
        pass under way, all at the same moment.

        A job that enqueues a follow-up does so before it returns, so the runner is not
        idle between the two. Deferred wake-ups that are not due yet do not count (they
        are future work, not pending work); one whose time has come counts as queued
        even if its timer has not fired yet. Crons count only while a pass runs: the
        wait between passes is idle, so ``drained`` does not promise that a cron ran
        (a test that needs a pass calls the cron itself). Without ``run_jobs`` nothing
        ever runs here, so the runner is idle at once."""
        if not self.run_jobs:
            return
        changed = self.broker.changed
        while not self._idle():
            changed.clear()
            if self.broker.deferring():  # a deferred wake-up falls due by itself
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.05)
            else:
                await changed.wait()

    async def start(self) -> None:
        """Start the consumers and crons, then wake what a restart left unfinished (this
        process is the only worker)."""
        if not self.run_jobs:
            return
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._consume(), name=f"batchd-runner-{i}"))
        for cron in self.table.crons:
            self._tasks.append(asyncio.create_task(self._every(cron), name=f"cron:{cron.name}"))
        await self.table.on_start(self.ctx)

    async def stop(self) -> None:
        """Stop taking work; give in-flight chunks a moment to finish, then cancel.

        A cancelled chunk rolls back, so its items stay pending for the next start.
        """
        self.ctx.stopping.set()
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
        while True:
            wakeup = await self.broker.take()
            if self.ctx.stopping.is_set():
                continue
            self._busy += 1
            try:
                await self.table.jobs[wakeup.job](self.ctx, wakeup.batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s(%s) failed", wakeup.job, wakeup.batch_id)
            finally:
                self._busy -= 1
                self.broker.changed.set()

    async def _every(self, cron: Cron) -> None:
        while not self.ctx.stopping.is_set():
            self._crons_busy += 1
            try:
                await cron.run(self.ctx)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cron %s failed", cron.name)
            finally:
                self._crons_busy -= 1
                self.broker.changed.set()
            await asyncio.sleep(cron.every_s)
