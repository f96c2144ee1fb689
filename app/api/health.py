"""Liveness and readiness (no auth)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from app.errors import Unavailable

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_S = 3.0
"""A dependency that has not answered in this long counts as down: a probe must answer
quickly even when a host has vanished and connects would hang."""


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    """``checks`` maps each dependency (``database``, ``redis``) to ``ok`` or
    ``unavailable``."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class NotReadyOut(ReadyOut):
    """The error shape of every 503 (``error``, ``detail``), plus which check failed."""

    error: Literal["Unavailable"]
    detail: str


@router.get("/health", response_model=HealthOut, operation_id="health", summary="Liveness")
async def health() -> dict[str, str]:
    """The process answers; nothing else is checked (a load balancer's liveness probe)."""
    return {"status": "ok"}


@router.get(
    "/ready",
    operation_id="ready",
    summary="Readiness (database, Redis)",
    response_model=ReadyOut,
    responses={
        503: {
            "model": NotReadyOut,
            "description": "A dependency is not reachable (with a Retry-After header).",
        }
    },
)
async def ready(request: Request) -> JSONResponse:
    """Whether the database (and Redis, when configured) answer within 3 s: 200, or 503
    naming which check failed (a readiness probe: take the process out of rotation)."""
    state = request.app.state
    checks = {"database": await _check(lambda: _select_one(request))}
    if state.settings.redis_url:
        checks["redis"] = await _check(state.queue.ping)
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    down = Unavailable()
    return JSONResponse(
        {**down.to_dict(), "status": "unavailable", "checks": checks},
        status_code=down.status_code,
        headers={"Retry-After": str(down.retry_after_s)},
    )


async def _select_one(request: Request) -> None:
    async with request.app.state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check(probe: Callable[[], Awaitable[None]]) -> str:
    """``ok`` or ``unavailable``; never the error itself (the probe is public)."""
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
    except Exception:
        return "unavailable"
    return "ok"
