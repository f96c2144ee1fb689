"""Liveness, readiness and the error shape for unknown routes and bad tokens."""

from __future__ import annotations

import httpx
import pytest


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["checks"]["database"] == "ok"


async def test_unknown_route_uses_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "NotFound"


def _closed_port() -> int:
    from tests.conftest import free_port

    return free_port()  # nothing listens there once the probe socket is closed


@pytest.mark.external_workers
@pytest.mark.parametrize(
    "settings_overrides", [{"redis_url": f"redis://127.0.0.1:{_closed_port()}/0"}]
)
async def test_ready_is_503_json_while_redis_is_unreachable(client: httpx.AsyncClient) -> None:
    """The API starts without its Redis and says so on /ready (JSON, retryable), while
    /health, liveness, stays 200."""
    r = await client.get("/ready")
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["error"] == "Unavailable" and body["detail"]
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "redis": "unavailable"}
    assert (await client.get("/health")).status_code == 200
