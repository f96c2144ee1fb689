"""GET /api/v1/batches/{id}/events: live progress over server-sent events.

First a ``progress`` event with the current batch, then one whenever its progress
sequence moves (coalesced to at most ~10 a second; ``id:`` is that sequence), a
``: ping`` comment after ``BATCH_SSE_PING_INTERVAL`` seconds of silence, and a final
``end`` event, after which the stream closes. ``Last-Event-ID`` resumes: the current
state is sent at once only if it moved since that id.

Scale: the streams of one batch share one reader (``app.batches.events``), so a waiting
client holds no database connection and 200 clients cost one read per change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.api.deps import get_current_user
from app.batches import service
from app.batches.events import BatchWatches
from app.domain import FINAL
from app.models import User
from app.schemas.batch import BatchOut
from app.schemas.common import IdPath, error_responses, parse_id

router = APIRouter(prefix="/api/v1", tags=["batches"])


def parse_event_id(raw: str | None) -> int | None:
    """A ``Last-Event-ID`` we sent (the digits of a progress sequence), or None: anything
    else is ignored, never an error (Starlette decodes header bytes as latin-1, so a 0xB2
    byte arrives as "²")."""
    return None if raw is None else parse_id(raw)


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
    return await service.batch_out(session, await service.get_batch(session, user, batch_id), user)


def _watches(app: FastAPI) -> BatchWatches:
    """This app's watches (kept on ``app.state``: per app, per event loop)."""
    watches: BatchWatches | None = getattr(app.state, "batch_watches", None)
    if watches is None:
        state = app.state
        watches = state.batch_watches = BatchWatches(
            state.sessionmaker, state.progress, state.settings.poll_time
        )
    return watches


def watch_count(app: FastAPI) -> int:
    """Batches being watched right now (0 once every stream has closed)."""
    return len(_watches(app))


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
    """A ``progress`` event with the batch now, one whenever its counters or status
    change (at most ~10 a second), a ping comment every 15 s, and a final ``end`` event,
    after which the stream closes. Reconnect with ``Last-Event-ID`` to hear only news."""
    seen = parse_event_id(last_event_id)
    current = start.batch
    ping = request.app.state.settings.sse_ping_interval
    watches = _watches(request.app)
    watch = None if current.status in FINAL else watches.subscribe(current)
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
            watches.unsubscribe(watch)
