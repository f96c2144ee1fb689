"""Progress fan-out. A message is a nudge ("batch N changed"); listeners re-read the
database, so a lost or coalesced nudge costs latency, never correctness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff

from app.runtime.arq_backend import progress_client

log = logging.getLogger("batchd.progress")

CHANNEL_PREFIX = "batchd:progress:"
POLL_S = 1.0
"""How often the subscriber wakes up without a message (to health-check its socket)."""
RESUBSCRIBE_BASE_S = 0.1
RESUBSCRIBE_MAX_S = 2.0
"""Back-off between attempts to subscribe again while Redis is down (doubling, capped)."""


class LocalProgressBus:
    """In-process broadcaster: one ``asyncio.Event`` per listener. The embedded
    default's ``ProgressBus``, and the local fan-out inside ``RedisProgressBus``."""

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

    def notify_all(self) -> None:
        """Nudge every listener: nudges sent while a subscription was lost are gone."""
        for batch_id in list(self._listeners):
            self.notify(batch_id)

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


class RedisProgressBus:
    """Publishes on Redis; one pattern subscription per process feeds the local
    listeners (a ``LocalProgressBus`` of its own).

    The subscription outlives Redis restarts: when its connection fails, the pump drops
    that subscription and subscribes again (backing off while Redis is down), then
    nudges every local listener once, because nudges sent meanwhile were lost."""

    def __init__(self, redis_url: str, *, listen: bool = True) -> None:
        self._local = LocalProgressBus()
        self._redis: Redis = progress_client(redis_url)
        self._listen = listen
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        """Set while the pattern subscription is live (cleared when it is lost)."""

    async def publish(self, batch_id: int) -> None:
        try:
            await self._redis.publish(f"{CHANNEL_PREFIX}{batch_id}", b"1")
        except Exception as exc:  # a nudge is best effort; the stream polls as well
            log.warning("progress publish failed: %s", exc)
        self._local.notify(batch_id)

    def listen(self, batch_id: int) -> AbstractAsyncContextManager[asyncio.Event]:
        return self._local.listen(batch_id)

    def listener_count(self, batch_id: int | None = None) -> int:
        return self._local.listener_count(batch_id)

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
        backoff = ExponentialBackoff(cap=RESUBSCRIBE_MAX_S, base=RESUBSCRIBE_BASE_S)
        failures = 0
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.subscribed.is_set() or failures == 0:  # a new outage: say so once
                    failures = 0
                    log.warning("progress subscription lost (%s); resubscribing", exc)
                self.subscribed.clear()
                failures += 1
                await asyncio.sleep(backoff.compute(failures))

    async def _follow(self) -> None:
        """Subscribe and relay messages until the connection fails. ``get_message`` with
        a timeout (rather than ``listen()``) returns every ``POLL_S``, so redis-py's
        ``health_check_interval`` PINGs an idle subscription and a half-open socket is
        found instead of waiting forever."""
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
            if not self.subscribed.is_set():
                self.subscribed.set()
                log.info("progress subscription active")
                self._local.notify_all()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is None or message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                with contextlib.suppress(ValueError):
                    self._local.notify(int(channel.removeprefix(CHANNEL_PREFIX)))
