"""Every router the app mounts, in one list."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import (
    archives,
    batches,
    definitions,
    events,
    health,
    imports,
    instances,
    metrics,
    nodes,
    results,
    session,
    tasks,
    templates,
    users,
)

ALL: list[APIRouter] = [
    health.router,
    users.router,
    session.router,
    definitions.router,
    instances.router,
    tasks.router,
    nodes.router,
    archives.router,
    batches.router,
    results.router,
    templates.router,
    imports.router,
    events.router,
    metrics.router,
]
