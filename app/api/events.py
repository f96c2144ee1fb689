"""GET /api/v1/batches/{id}/events: live progress over server-sent events.

First a ``progress`` event with the current batch, then one whenever its progress
sequence moves (coalesced to at most ~10 a second), FastAPI's own ``: ping`` comment
every 15 s, and a final ``end`` event, after which the stream closes. A nudge from the
progress bus wakes the handler, which re-reads the database; without nudges it still
re-reads every ``BATCH_POLL_TIME``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import get_current_user
from app.batches import service
from app.batches.state import FINAL
from app.errors import NotFound
from app.models import User
from app.schemas.batch import BatchOut
from app.schemas.common import IdPath, error_responses

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


async def _read(request: Request, user: User, batch_id: int) -> BatchOut:
    async with request.app.state.sessionmaker() as session:
        return await _load(session, user, batch_id)


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
    user, current = start.user, start.batch
    seen = parse_event_id(last_event_id)
    poll = request.app.state.settings.poll_time
    bus = request.app.state.progress
    async with bus.listen(batch_id) as nudged:
        while True:
            final = current.status in FINAL
            data = current.model_dump(mode="json")
            event_id = str(current.progress_seq)
            if seen != current.progress_seq:
                yield ServerSentEvent(event="progress", data=data, id=event_id)
                seen = current.progress_seq
            if final:
                yield ServerSentEvent(event="end", data=data, id=event_id)
                return
            nudged.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudged.wait(), timeout=poll)
            await asyncio.sleep(MIN_EVENT_GAP_S)
            try:
                current = await _read(request, user, batch_id)
            except NotFound:  # purged meanwhile: nothing more will happen
                return
            except Exception:  # the database blinked: keep the stream, try again
                await asyncio.sleep(poll)
