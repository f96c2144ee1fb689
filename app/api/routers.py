"""Every router the app mounts, in one list."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import (
    archives,
    batches,
    definitions,
    events,
    health,
    instances,
    metrics,
    nodes,
    results,
    tasks,
    users,
)

ALL: list[APIRouter] = [
    health.router,
    users.router,
    definitions.router,
    instances.router,
    tasks.router,
    nodes.router,
    archives.router,
    batches.router,
    results.router,
    events.router,
    metrics.router,
]
