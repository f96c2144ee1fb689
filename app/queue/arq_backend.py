"""arq on Redis: one queue per priority. The API only enqueues; ``batchd worker`` runs."""

from __future__ import annotations

import logging

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from app.queue.backend import PRIORITIES, QueueBackend, Wakeup, queue_name

log = logging.getLogger("batchd.arq")


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 2
    return settings


class ArqQueue(QueueBackend):
    def __init__(self, redis_url: str, pool: ArqRedis | None = None) -> None:
        self.redis_url = redis_url
        self.pool = pool
        self._owns_pool = pool is None

    async def start(self) -> None:
        if self.pool is None:
            self.pool = await create_pool(redis_settings(self.redis_url))

    async def stop(self) -> None:
        if self.pool is not None and self._owns_pool:
            await self.pool.aclose()
            self.pool = None

    async def ping(self) -> None:
        assert self.pool is not None
        await self.pool.ping()

    async def enqueue(self, wakeup: Wakeup) -> None:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            await self.pool.enqueue_job(
                wakeup.job,
                wakeup.batch_id,
                _queue_name=queue_name(wakeup.priority),
                _job_id=wakeup.key,
                _defer_by=wakeup.defer,
            )
        except Exception as exc:  # the database holds the work; recovery re-sends it
            log.warning("enqueue %s(%s) failed: %s", wakeup.job, wakeup.batch_id, exc)

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
