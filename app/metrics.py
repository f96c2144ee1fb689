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

import logging
from collections.abc import Hashable, Iterable, Mapping
from datetime import datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

from app.domain import BatchStatus, DetailStatus

log = logging.getLogger("batchd.metrics")

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
BATCH_HEARTBEAT_AGE = Gauge(
    "batchd_batch_heartbeat_age_seconds",
    "Per status a batch moves on in (created, seeding, running): seconds the batch that "
    "has gone longest without progress (a chunk's results, a seed page, a status change) "
    "has waited; 0 when no batch is in it (read at scrape time). A re-wake by the "
    "recovery cron is not progress.",
    ["status"],
)
HEARTBEAT_STATUSES: tuple[str, ...] = (
    BatchStatus.CREATED.value,
    BatchStatus.SEEDING.value,
    BatchStatus.RUNNING.value,
)
"""The statuses whose batches must move on by themselves (``BATCH_START_TIMEOUT`` for
the first two, ``BATCH_STUCK_AFTER`` for running); the others wait for a person or a
clock."""
SSE_SUBSCRIBERS = Gauge(
    "batchd_sse_subscribers",
    "Open server-sent event streams (GET /api/v1/batches/{id}/events) in this process.",
)
WEBHOOK_DELIVERIES = Counter(
    "batchd_webhook_deliveries",
    "Webhook delivery attempts by result: delivered, retrying (failed, another attempt "
    "is scheduled) or failed (given up).",
    ["outcome"],
)
WEBHOOK_BACKLOG = Gauge(
    "batchd_webhook_outbox_backlog",
    "Webhook deliveries waiting to be delivered (status pending; read at scrape time).",
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "batchd_webhook_oldest_pending_seconds",
    "Age of the oldest pending webhook delivery, 0 when none (read at scrape time).",
)
WEBHOOK_SUBSCRIPTIONS = Gauge(
    "batchd_webhook_subscriptions",
    "Webhook subscriptions by status: active, disabled (read at scrape time).",
    ["status"],
)
for _status in HEARTBEAT_STATUSES:
    BATCH_HEARTBEAT_AGE.labels(_status)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")
for _outcome in WEBHOOK_OUTCOMES:
    # Exported at 0 from the start: a series that first appears at 1 is invisible to
    # increase(), so the alert on given-up deliveries would miss a process's first one.
    WEBHOOK_DELIVERIES.labels(_outcome)

_enabled = True


def configure(*, enabled: bool) -> None:
    """Turn the hooks on or off for this process (``BATCH_METRICS``)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def chunk_done(op_type: str, seconds: float, counts: Mapping[DetailStatus, int]) -> None:
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


def webhook_attempt(outcome: str) -> None:
    """One webhook attempt ended: ``delivered``, ``retrying`` or ``failed``."""
    if _enabled:
        WEBHOOK_DELIVERIES.labels(outcome).inc()


def webhook_state(backlog: int, oldest_pending_s: float, subscriptions: Mapping[str, int]) -> None:
    """The scrape-time webhook gauges."""
    WEBHOOK_BACKLOG.set(backlog)
    WEBHOOK_OLDEST_PENDING.set(oldest_pending_s)
    for status, n in subscriptions.items():
        WEBHOOK_SUBSCRIPTIONS.labels(status).set(n)


class ProgressClock:
    """When each unfinished batch last made progress, as this process has seen it.

    Progress is the batch's ``progress_seq`` or status changing: every chunk's results,
    seed page and status change bumps the sequence together with ``updated_at``, but
    the recovery cron's re-wake touches only ``updated_at`` — so a batch that stays stuck
    through re-wakes keeps ageing here, which ``now - updated_at`` would not show (it
    drops to 0 at each pass). A batch seen for the first time counts from its
    ``updated_at`` (after an API restart a stuck batch may show up to one
    ``BATCH_STUCK_AFTER`` younger than it is)."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, tuple[str, int, datetime]] = {}

    def ages(
        self, batches: Iterable[tuple[Hashable, str, int, datetime]], now: datetime
    ) -> dict[str, float]:
        """(identity, status, progress_seq, updated_at) of every batch in a
        ``HEARTBEAT_STATUSES`` status → the oldest age per status (0 for none). The
        identity is the batch id with its ``created_at`` (a test database reuses ids).
        Batches not passed again are forgotten."""
        oldest = dict.fromkeys(HEARTBEAT_STATUSES, 0.0)
        seen: dict[Hashable, tuple[str, int, datetime]] = {}
        for key, status, seq, updated_at in batches:
            before = self._seen.get(key)
            since = before[2] if before and before[:2] == (status, seq) else updated_at
            seen[key] = (status, seq, since)
            if status in oldest:
                oldest[status] = max(oldest[status], (now - since).total_seconds())
        self._seen = seen
        return oldest


def batch_heartbeats(oldest: Mapping[str, float]) -> None:
    """The scrape-time heartbeat gauge, from ``ProgressClock.ages``."""
    for status, age in oldest.items():
        BATCH_HEARTBEAT_AGE.labels(status).set(age)


def render() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)
