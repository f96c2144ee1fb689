"""Progress fan-out. A message is a nudge ("batch N changed"); listeners re-read the
database, so a lost or coalesced nudge costs latency, never correctness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.asyncio import Redis

log = logging.getLogger("batchd.progress")

CHANNEL_PREFIX = "batchd:progress:"


class LocalProgressBus:
    """In-process broadcaster: one ``asyncio.Event`` per listener."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[asyncio.Event]] = defaultdict(set)

    async def publish(self, batch_id: int) -> None:
        self.notify(batch_id)

    def listener_count(self, batch_id: int | None = None) -> int:
        """Listeners of one batch, or of all: a closed stream must leave none behind."""
        if batch_id is not None:
            return len(self._listeners.get(batch_id, ()))
        return sum(len(events) for events in self._listeners.values())

    def notify(self, batch_id: int) -> None:
        for event in self._listeners.get(batch_id, ()):
            event.set()

    @contextlib.asynccontextmanager
    async def listen(self, batch_id: int) -> AsyncIterator[asyncio.Event]:
        event = asyncio.Event()
        self._listeners[batch_id].add(event)
        try:
            yield event
        finally:
            self._listeners[batch_id].discard(event)
            if not self._listeners[batch_id]:
                self._listeners.pop(batch_id, None)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class RedisProgressBus(LocalProgressBus):
    """Publishes on Redis; one pattern subscription per process feeds local listeners."""

    def __init__(self, redis_url: str, *, listen: bool = True) -> None:
        super().__init__()
        self._redis: Redis = Redis.from_url(redis_url)
        self._listen = listen
        self._task: asyncio.Task[None] | None = None

    async def publish(self, batch_id: int) -> None:
        try:
            await self._redis.publish(f"{CHANNEL_PREFIX}{batch_id}", b"1")
        except Exception as exc:  # a nudge is best effort; the stream polls as well
            log.warning("progress publish failed: %s", exc)
        self.notify(batch_id)

    async def start(self) -> None:
        if self._listen:
            self._task = asyncio.create_task(self._pump(), name="batchd-progress-pump")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()

    async def _pump(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    with contextlib.suppress(ValueError):
                        self.notify(int(channel.removeprefix(CHANNEL_PREFIX)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted: resubscribe after a pause
                log.warning("progress subscription lost (%s); retrying", exc)
                await asyncio.sleep(1)
