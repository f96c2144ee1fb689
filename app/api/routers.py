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
    oidc,
    results,
    session,
    tasks,
    templates,
    users,
    webhooks,
)

ALL: list[APIRouter] = [
    health.router,
    users.router,
    session.router,
    oidc.router,
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
    webhooks.router,
]
