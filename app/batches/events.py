"""Watching batches for their event streams: one reader per batch and process, shared
by every stream that watches it (app/api/events.py serves the streams).

However many streams watch one batch, one ``BatchWatch`` task listens on the progress
bus and re-reads the row — on a nudge (reads at least ``MIN_EVENT_GAP_S`` apart: that
is the coalescing) or every ``BATCH_POLL_TIME`` without one — with a short session;
the streams only wait on it. So a waiting client holds no database connection, 200
clients cost one read per change, and when the last client of a batch leaves, its watch
task and bus listener go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.batches import service
from app.domain import FINAL
from app.models import Batch
from app.runtime.backend import ProgressBus
from app.schemas.batch import BatchOut

T = TypeVar("T")

log = logging.getLogger("batchd.events")

MIN_EVENT_GAP_S = 0.1


@dataclass(eq=False)
class BatchWatch:
    """The latest known state of one batch, shared by every stream that watches it.

    ``changed`` is replaced (and the old one set) on each new state, so a stream that
    took the event before looking at ``current`` never misses an update."""

    batch_id: int
    current: BatchOut
    gone: bool = False
    subscribers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def offer(self, batch: BatchOut) -> None:
        """Take a state if it is newer than the one held, and wake the streams."""
        if batch.progress_seq < self.current.progress_seq or batch == self.current:
            return
        self.current = batch
        self._wake()

    def vanish(self) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class BatchWatches:
    """The watches of one process (one event loop)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        progress: ProgressBus,
        poll_time: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.progress = progress
        self.poll_time = poll_time
        self._watches: dict[int, BatchWatch] = {}

    def __len__(self) -> int:
        """Batches being watched right now (0 once every stream has closed)."""
        return len(self._watches)

    def subscribe(self, start: BatchOut) -> BatchWatch:
        watch = self._watches.get(start.id)
        if watch is None:
            watch = self._watches[start.id] = BatchWatch(start.id, start)
            watch.task = asyncio.create_task(self._follow(watch), name=f"batchd-watch-{start.id}")
        else:
            watch.offer(start)
        watch.subscribers += 1
        return watch

    def unsubscribe(self, watch: BatchWatch) -> None:
        watch.subscribers -= 1
        if watch.subscribers > 0:
            return
        if self._watches.get(watch.batch_id) is watch:
            del self._watches[watch.batch_id]
        if watch.task is not None:
            watch.task.cancel()

    async def _read(self, watch: BatchWatch) -> BatchOut | None:
        """The batch as it is now; its creator's name is the one the stream started
        with (a batch never changes creator: no second read per event)."""
        async with self.sessionmaker() as session:
            batch = await session.get(Batch, watch.batch_id, populate_existing=True)
            if batch is None:
                return None
            return service.to_out(batch, watch.current.creator_name)

    async def _follow(self, watch: BatchWatch) -> None:
        try:
            await self._follow_loop(watch)
        finally:  # however it ended, no stream may wait on a watch nobody updates
            watch.vanish()

    async def _follow_loop(self, watch: BatchWatch) -> None:
        loop = asyncio.get_running_loop()
        last_read = float("-inf")
        async with self.progress.listen(watch.batch_id) as nudged:
            while watch.current.status not in FINAL and not watch.gone:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(nudged.wait(), timeout=self.poll_time)
                # Reads are at least MIN_EVENT_GAP_S apart, counted from the last read:
                # a nudge after a quiet spell is read at once, and nudges closer than the
                # gap are read together once it has passed (waiting the gap after every
                # nudge instead merged two commits 50 ms apart into one event).
                await asyncio.sleep(max(0.0, last_read + MIN_EVENT_GAP_S - loop.time()))
                last_read = loop.time()
                # Cleared just before the read, which sees every change nudged so far: a
                # change committed during the read nudges again and is read after the gap
                # (cleared at the top of the loop, it waited for the next change).
                nudged.clear()
                try:
                    current = await _uncut(self._read(watch))
                    if current is None:  # purged meanwhile: nothing more will happen
                        watch.vanish()
                        return
                    watch.offer(current)
                except Exception as exc:  # the database blinked: keep watching, try again
                    log.warning("batch %s watch: read failed: %r", watch.batch_id, exc)
                    await asyncio.sleep(self.poll_time)


async def _uncut(read: Coroutine[Any, Any, T]) -> T:
    """Await ``read`` so that cancelling the waiter (the last stream closed) lets the read
    itself finish and close its session. A read cut off mid-statement could leave its
    transaction open — on SQLite, whose transactions all take the writer lock (``BEGIN
    IMMEDIATE``), that stalled every writer until the busy timeout."""
    task = asyncio.ensure_future(read)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_retrieved)
        raise


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed read after its stream closed is nobody's error
