"""GET /api/v1/batches/{id}/events: live progress over server-sent events (DESIGN.md §4).

First a ``progress`` event with the current batch, then one whenever its progress
sequence moves (coalesced to at most ~10 a second; ``id:`` is that sequence), a
``: ping`` comment after ``BATCH_SSE_PING_INTERVAL`` seconds of silence, and a final
``end`` event, after which the stream closes. ``Last-Event-ID`` resumes: the current
state is sent at once only if it moved since that id.

Scale: however many streams watch one batch, one ``BatchWatch`` task per batch and
process listens on the progress bus and re-reads the row (on a nudge, or every
``BATCH_POLL_TIME`` without one) with a short session of its own; the streams only
wait on it. So a waiting client holds no database connection, 200 clients cost one
read per change, and when the last client of a batch leaves its watch task and bus
listener go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.api.deps import get_current_user
from app.batches import service
from app.batches.state import FINAL
from app.models import Batch, User
from app.schemas.batch import BatchOut
from app.schemas.common import IdPath, error_responses

log = logging.getLogger("batchd.events")

router = APIRouter(prefix="/api/v1", tags=["batches"])

MIN_EVENT_GAP_S = 0.1


def parse_event_id(raw: str | None) -> int | None:
    """A ``Last-Event-ID`` we sent (ASCII digits of a progress sequence), or None.

    Anything else is ignored, never an error: Starlette decodes header bytes as
    latin-1, so a 0xB2 byte arrives as "²", which ``str.isdigit`` accepts and ``int``
    refuses — that used to kill the stream."""
    if raw is None:
        return None
    raw = raw.strip()
    if not (0 < len(raw) <= 19 and raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


@dataclass
class StreamStart:
    user: User
    batch: BatchOut


async def stream_start(request: Request, batch_id: IdPath) -> StreamStart:
    """Authenticate and load the batch before the stream starts (so a bad token or an
    unknown batch is a JSON 401/404, not a broken stream), with a short session of its
    own: a stream must not hold a database connection for its whole life."""
    async with request.app.state.sessionmaker() as session:
        user = await get_current_user(request, session)
        return StreamStart(user, await _load(session, user, batch_id))


async def _load(session: AsyncSession, user: User, batch_id: int) -> BatchOut:
    return service.to_out(await service.get_batch(session, user, batch_id))


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


def _watches(app: FastAPI) -> dict[int, BatchWatch]:
    """This app's watches (kept on ``app.state``: per app, per event loop)."""
    watches: dict[int, BatchWatch] | None = getattr(app.state, "batch_watches", None)
    if watches is None:
        watches = app.state.batch_watches = {}
    return watches


def watch_count(app: FastAPI) -> int:
    """Batches being watched right now (0 once every stream has closed)."""
    return len(_watches(app))


def _subscribe(app: FastAPI, start: BatchOut) -> BatchWatch:
    watches = _watches(app)
    watch = watches.get(start.id)
    if watch is None:
        watch = watches[start.id] = BatchWatch(start.id, start)
        watch.task = asyncio.create_task(_follow(app, watch), name=f"batchd-watch-{start.id}")
    else:
        watch.offer(start)
    watch.subscribers += 1
    return watch


def _unsubscribe(app: FastAPI, watch: BatchWatch) -> None:
    watch.subscribers -= 1
    if watch.subscribers > 0:
        return
    watches = _watches(app)
    if watches.get(watch.batch_id) is watch:
        del watches[watch.batch_id]
    if watch.task is not None:
        watch.task.cancel()


async def _follow(app: FastAPI, watch: BatchWatch) -> None:
    """Re-read the batch on each nudge (at most every ``MIN_EVENT_GAP_S``: that is the
    coalescing) or every ``poll_time`` without one, until it is final or gone."""
    poll = app.state.settings.poll_time
    try:
        await _follow_loop(app, watch, poll)
    finally:  # however it ended, no stream may wait on a watch nobody updates
        watch.vanish()


async def _follow_loop(app: FastAPI, watch: BatchWatch, poll: float) -> None:
    async with app.state.progress.listen(watch.batch_id) as nudged:
        while watch.current.status not in FINAL and not watch.gone:
            nudged.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudged.wait(), timeout=poll)
            await asyncio.sleep(MIN_EVENT_GAP_S)
            try:
                async with app.state.sessionmaker() as session:
                    batch = await session.get(Batch, watch.batch_id, populate_existing=True)
                    if batch is None:  # purged meanwhile: nothing more will happen
                        watch.vanish()
                        return
                    watch.offer(service.to_out(batch))
            except Exception as exc:  # the database blinked: keep watching, try again
                log.warning("batch %s watch: read failed: %r", watch.batch_id, exc)
                await asyncio.sleep(poll)


@router.get(
    "/batches/{batch_id}/events",
    response_class=EventSourceResponse,
    responses=error_responses(401, 404),
)
async def batch_events(
    request: Request,
    batch_id: IdPath,
    start: Annotated[StreamStart, Depends(stream_start)],
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    seen = parse_event_id(last_event_id)
    current = start.batch
    ping = request.app.state.settings.sse_ping_interval
    watch = None if current.status in FINAL else _subscribe(request.app, current)
    metrics.sse_opened()
    try:
        while True:
            changed = watch.changed if watch is not None else None
            if watch is not None and watch.current.progress_seq >= current.progress_seq:
                current = watch.current
            data = current.model_dump(mode="json")
            event_id = str(current.progress_seq)
            if seen != current.progress_seq:
                yield ServerSentEvent(event="progress", data=data, id=event_id)
                seen = current.progress_seq
            if current.status in FINAL:
                yield ServerSentEvent(event="end", data=data, id=event_id)
                return
            if watch is None or watch.gone or changed is None:
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=ping)
            except TimeoutError:
                yield ServerSentEvent(comment="ping")
    finally:
        metrics.sse_closed()
        if watch is not None:
            _unsubscribe(request.app, watch)
