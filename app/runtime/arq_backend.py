"""arq on Redis: one queue per priority. The API only enqueues; ``batchd worker`` runs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from arq import ArqRedis
from redis.asyncio import Redis

from app.domain import Wakeup
from app.runtime.backend import PRIORITIES, Broker, queue_name

log = logging.getLogger("batchd.arq")

CONNECT_TIMEOUT_S = 2.0
"""How long opening a connection to Redis may take before it counts as down."""
HEALTH_CHECK_S = 15
"""A connection idle this long is PINGed before it is used again."""
KEEPALIVE_S = (10, 5, 3)
"""TCP keepalive: first probe after 10 s of silence, then every 5 s, 3 unanswered probes
and the connection is dead (about 25 s for a host that vanished without closing it)."""


def redis_options(redis_url: str) -> dict[str, Any]:
    """redis-py's own options that keep a client from hanging on a Redis that went away:
    a refused or unanswered connect fails after ``CONNECT_TIMEOUT_S``, an idle
    connection is checked before reuse, and TCP keepalive ends a half-open connection
    (the host vanished without closing it) that a command waits on. The failure then
    reaches the caller, which knows whether to retry (the worker's supervisor) or to
    answer 503.

    No ``socket_timeout``: redis-py wraps every send in ``asyncio.wait_for`` when it is
    set, and on Python 3.11 ``wait_for`` can swallow a cancellation, which made a
    worker hang on SIGTERM."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_S,
    }
    if redis_url.startswith("unix:"):  # a local socket has no TCP keepalive
        return options
    keepalive: dict[int, int] = {}
    for name, value in zip(
        ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE_S, strict=True
    ):
        if hasattr(socket, name):  # Linux; other systems keep their defaults
            keepalive[getattr(socket, name)] = value
    return {**options, "socket_keepalive": True, "socket_keepalive_options": keepalive}


def connect(redis_url: str) -> ArqRedis:
    """An arq client for ``redis_url``. It connects on its first command, not here, so
    a process starts while Redis is down and reconnects by itself once it is back
    (every command takes a pooled connection and redis-py reopens a closed one). arq's
    ``create_pool`` would PING (and give up) at once, and cannot pass these options."""
    client: ArqRedis = ArqRedis.from_url(redis_url, **redis_options(redis_url))
    return client


def progress_client(redis_url: str) -> Redis:
    """A plain client with the same options, for progress pub/sub."""
    client: Redis = Redis.from_url(redis_url, **redis_options(redis_url))
    return client


class ArqQueue(Broker):
    def __init__(self, redis_url: str, pool: ArqRedis | None = None) -> None:
        self.redis_url = redis_url
        self.pool = pool
        self._owns_pool = pool is None
        self.on_enqueued: Callable[[str, str], None] | None = None
        """Told (queue name, job id) of each job this queue enqueued to run now. A worker
        process sets it to start the jobs it wakes itself at once (``WorkerGroup.nudge``)
        rather than at its next poll; the API leaves it unset."""

    async def start(self) -> None:
        if self.pool is None:
            self.pool = connect(self.redis_url)

    async def stop(self) -> None:
        if self.pool is not None and self._owns_pool:
            await self.pool.aclose()
            self.pool = None

    async def ping(self) -> None:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        await self.pool.ping()

    async def enqueue(self, wakeup: Wakeup) -> None:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        queue = queue_name(wakeup.priority)
        try:
            job = await self.pool.enqueue_job(
                wakeup.job,
                wakeup.batch_id,
                _queue_name=queue,
                _job_id=wakeup.key,
                _defer_by=wakeup.defer,
            )
        except Exception as exc:  # the database holds the work; recovery re-sends it
            log.warning("enqueue %s(%s) failed: %s", wakeup.job, wakeup.batch_id, exc)
            return
        # A duplicate (same key) is None: the job already waits or runs.
        if job is not None and not wakeup.defer and self.on_enqueued is not None:
            self.on_enqueued(queue, job.job_id)

    async def depth(self) -> dict[str, int]:
        """Jobs waiting per priority: ZCARD of each arq queue (deferred jobs included,
        they sit in the same sorted set), one pipelined round trip."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        async with self.pool.pipeline(transaction=False) as pipe:
            for priority in PRIORITIES:
                pipe.zcard(queue_name(priority))
            counts = await pipe.execute()
        return {p: int(n) for p, n in zip(PRIORITIES, counts, strict=True)}
