"""GET /metrics: Prometheus text format, no auth.

Off (404) with ``BATCH_METRICS=false``. The state gauges are refreshed right before
the registry is rendered; see ``app.metrics``."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.schemas.common import error_responses

router = APIRouter(tags=["monitoring"])


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
    await metrics.refresh(request.app.state.sessionmaker, request.app.state.queue)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
