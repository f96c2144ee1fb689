"""GET /metrics: Prometheus text format, no auth.

Off (404) with ``BATCH_METRICS=false``. The state gauges are refreshed right before
the registry is rendered; see ``app.metrics``."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.db.base import utcnow
from app.domain import BatchStatus
from app.models import Batch
from app.runtime.backend import Broker
from app.schemas.common import error_responses
from app.webhooks import service as webhooks

router = APIRouter(tags=["monitoring"])
log = logging.getLogger("batchd.metrics")

SCRAPE_TIMEOUT_S = 5.0
"""A scrape never waits longer than this for the database or Redis: on a timeout it
shows the last values it read (a slow scrape must not pile up connections)."""
_refreshing = False


async def refresh(sessionmaker: async_sessionmaker[AsyncSession], broker: Broker) -> None:
    """Read the state gauges (batches by status, the oldest heartbeat per status, the
    webhook outbox, queue depth) just before a scrape.

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
        try:
            await asyncio.wait_for(_refresh_webhooks(sessionmaker), SCRAPE_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: webhook outbox not read: %r", exc)
        try:
            depth = await asyncio.wait_for(broker.depth(), SCRAPE_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: queue depth not read: %r", exc)
        else:
            for priority, n in depth.items():
                metrics.QUEUE_DEPTH.labels(priority).set(n)
    finally:
        _refreshing = False


_progress = metrics.ProgressClock()
"""This process's memory of when each unfinished batch last moved (see ``ProgressClock``)."""


async def _refresh_batches(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        rows = (
            await session.execute(select(Batch.status, func.count()).group_by(Batch.status))
        ).all()
        moving = (
            await session.execute(
                select(
                    Batch.id, Batch.created_at, Batch.status, Batch.progress_seq, Batch.updated_at
                ).where(Batch.status.in_(metrics.HEARTBEAT_STATUSES))
            )
        ).all()
    counts = {str(status): int(n) for status, n in rows}
    for status in [*BatchStatus, *counts]:  # every known status, 0 when there is none
        metrics.BATCHES.labels(str(status)).set(counts.get(str(status), 0))
    rows_by_batch = (((r.id, r.created_at), r.status, r.progress_seq, r.updated_at) for r in moving)
    metrics.batch_heartbeats(_progress.ages(rows_by_batch, utcnow()))


async def _refresh_webhooks(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        backlog, oldest, by_status = await webhooks.gauges(session)
    counts = {s: by_status.get(s, 0) for s in webhooks.subscription_statuses()}
    metrics.webhook_state(backlog, oldest, {**by_status, **counts})


@router.get(
    "/metrics",
    operation_id="get_metrics",
    include_in_schema=True,
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(404),
    },
)
async def get_metrics(request: Request) -> Response:
    """Batches by status, items by type and outcome, chunk durations, queue depth per
    priority and SSE subscribers (all prefixed ``batchd_``)."""
    if not request.app.state.settings.metrics:
        raise HTTPException(404, "Metrics are turned off (BATCH_METRICS=false).")
    await refresh(request.app.state.sessionmaker, request.app.state.queue)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
