"""A job the worker enqueues itself (a seed lane, an executor, a monitor, a seed job's
next slice) starts at once, not at the worker's next poll of its queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import arq.worker
import pytest
from fastapi import FastAPI

from app.batches.jobs import job_table
from app.config import Settings
from app.domain import Wakeup
from app.runtime.arq_backend import ArqQueue
from app.runtime.backend import PRIORITIES, queue_name
from tests.batch_helpers import eventually
from tests.conftest import postgres_only

pytestmark = [postgres_only, pytest.mark.external_workers]

NO_SUCH_BATCH = 10**12
"""A seed job for no batch: it looks, finds nothing, and ends."""


async def test_a_job_the_worker_enqueues_itself_starts_without_a_poll(
    app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.arq_worker import WorkerGroup

    polled = asyncio.Semaphore(0)

    async def one_poll(step: float) -> AsyncIterator[float]:
        """Each worker looks at its queue once, at start-up, and never again."""
        yield 0.0
        polled.release()
        await asyncio.Event().wait()
        yield 0.0  # never reached

    monkeypatch.setattr(arq.worker, "poll", one_poll)
    group = WorkerGroup(settings, job_table(settings))
    await group.start()
    try:
        for _ in PRIORITIES:
            await asyncio.wait_for(polled.acquire(), 30)
        assert group.runtime is not None and group.pool is not None
        queue = group.runtime.ctx.queue
        assert isinstance(queue, ArqQueue)
        wakeup = Wakeup("seed", NO_SUCH_BATCH, "normal")
        await queue.enqueue(wakeup)
        pool, name = group.pool, queue_name("normal")

        async def queued() -> list[Any]:
            return list(await pool.zrange(name, 0, -1))

        # No worker polls again: only starting the job at once can have run it (arq
        # keeps a job in its queue until it has finished).
        assert await eventually(queued, "the seed job has run", 10, until=lambda q: q == []) == []
    finally:
        await group.stop()
