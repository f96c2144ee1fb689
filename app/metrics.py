"""Prometheus metrics (``GET /metrics``).

Two kinds: *events* counted where they happen (chunks via ``chunk_done``, which the
executor calls after every chunk; SSE subscribers in the event stream) and *state*
read at scrape time (batches by status: one ``GROUP BY``; queue depth: the queue
backend's own count), so a scrape is always current and costs two small queries.

Everything lives in prometheus-client's default registry, so a process's ``/metrics``
(the API's route, or ``batchd worker``'s own HTTP server) also shows its ``process_*``
and ``python_*`` metrics. ``configure(enabled=False)`` (``BATCH_METRICS=false``) makes
every hook a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger("batchd.metrics")

SCRAPE_TIMEOUT_S = 5.0
"""A scrape never waits longer than this for the database or Redis: on a timeout it
shows the last values it read (a slow scrape must not pile up connections)."""

ITEMS = Counter(
    "batchd_items_processed",
    "Batch items processed, by operation type and outcome (success, failed, ignored, …).",
    ["type", "outcome"],
)
CHUNK_SECONDS = Histogram(
    "batchd_chunk_duration_seconds",
    "Time from claiming a chunk to committing its results, by operation type.",
    ["type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCHES = Gauge(
    "batchd_batches",
    "Batches in the database by status (read at scrape time).",
    ["status"],
)
QUEUE_DEPTH = Gauge(
    "batchd_queue_depth",
    "Wake-ups waiting in the job queue, by priority (read at scrape time).",
    ["priority"],
)
SSE_SUBSCRIBERS = Gauge(
    "batchd_sse_subscribers",
    "Open server-sent event streams (GET /api/v1/batches/{id}/events) in this process.",
)

_enabled = True
_refreshing = False


def configure(*, enabled: bool) -> None:
    """Turn the hooks on or off for this process (``BATCH_METRICS``)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def chunk_done(op_type: str, seconds: float, counts: Mapping[str, int]) -> None:
    """One chunk finished: how long it took (claim to commit) and its items by outcome."""
    if not _enabled:
        return
    CHUNK_SECONDS.labels(op_type).observe(seconds)
    for outcome, n in counts.items():
        if n:
            ITEMS.labels(op_type, outcome).inc(n)


def sse_opened() -> None:
    if _enabled:
        SSE_SUBSCRIBERS.inc()


def sse_closed() -> None:
    if _enabled:
        SSE_SUBSCRIBERS.dec()


@runtime_checkable
class HasDepth(Protocol):
    """A queue backend that can say how many wake-ups wait per priority."""

    async def depth(self) -> dict[str, int]: ...


async def refresh(sessionmaker: async_sessionmaker[AsyncSession], queue: Any) -> None:
    """Read the state gauges (batches by status, queue depth) just before a scrape.

    One refresh at a time (a scrape arriving meanwhile shows the values being read),
    each read bounded by ``SCRAPE_TIMEOUT_S``; a failed read keeps the previous values."""
    global _refreshing
    if _refreshing:
        return
    _refreshing = True
    try:
        try:
            await asyncio.wait_for(_refresh_batches(sessionmaker), SCRAPE_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: batches by status not read: %r", exc)
        if isinstance(queue, HasDepth):
            try:
                depth = await asyncio.wait_for(queue.depth(), SCRAPE_TIMEOUT_S)
            except Exception as exc:
                log.warning("metrics: queue depth not read: %r", exc)
            else:
                for priority, n in depth.items():
                    QUEUE_DEPTH.labels(priority).set(n)
    finally:
        _refreshing = False


async def _refresh_batches(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    from app.batches.state import BatchStatus
    from app.models import Batch

    async with sessionmaker() as session:
        rows = (
            await session.execute(select(Batch.status, func.count()).group_by(Batch.status))
        ).all()
    counts = {str(status): int(n) for status, n in rows}
    for status in [*BatchStatus, *counts]:  # every known status, 0 when there is none
        BATCHES.labels(str(status)).set(counts.get(str(status), 0))


def render() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)
