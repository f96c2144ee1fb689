"""200 concurrent SSE subscribers on one running batch, against a real uvicorn server:
every one gets the first state, progress and the final ``end``; the waiting streams hold
no database connection, and when they are gone nothing of theirs is left running."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.events import watch_count
from tests.batch_helpers import eventually, expense_setup
from tests.conftest import Actor, LiveServer
from tests.test_events import APPROVE, sse_events

SUBSCRIBERS = 200
ITEMS = 1000


@pytest.mark.parametrize("settings_overrides", [{"poll_time": 0.5}])
async def test_200_subscribers_all_get_end(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, ITEMS)
    app = live_server.app
    limits = httpx.Limits(max_connections=SUBSCRIBERS + 20, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60, limits=limits) as client:
        r = await client.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={
                "type": "task.approve",
                "ids": setup.task_ids,
                "params": APPROVE,
                "chunk_size": 20,
                "start_suspended": True,  # everyone connects before the work runs
            },
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        url = f"/api/v1/batches/{batch_id}/events"
        connected = asyncio.Semaphore(0)

        async def subscribe() -> list[dict[str, Any]]:
            events: list[dict[str, Any]] = []
            async with client.stream("GET", url, headers=alice.headers) as resp:
                assert resp.status_code == 200
                async for e in sse_events(resp):
                    if e["event"] == ":":
                        continue
                    if not events:
                        connected.release()
                    events.append(e)
            return events

        started = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(subscribe()) for _ in range(SUBSCRIBERS)]
        for _ in range(SUBSCRIBERS):
            await asyncio.wait_for(connected.acquire(), 30)
        # Every stream is open and waiting: one watch, one bus listener, no connection.
        assert watch_count(app) == 1
        assert app.state.progress.listener_count(batch_id) == 1
        assert app.state.engine.pool.checkedout() <= 2  # a passing read, a cron pass

        act = await client.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
        assert act.status_code == 200, act.text
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        elapsed = asyncio.get_running_loop().time() - started

    for events in results:
        assert events[0]["event"] == "progress"
        assert events[0]["data"]["status"] == "suspended"
        assert events[-1]["event"] == "end"
        end = events[-1]["data"]
        assert (end["status"], end["success"]) == ("completed", ITEMS)
        seqs = [int(e["id"]) for e in events if e["event"] == "progress"]
        assert seqs == sorted(set(seqs))
    assert elapsed < 30, elapsed
    assert watch_count(app) == 0

    async def listeners() -> int:
        return int(app.state.progress.listener_count())

    await eventually(listeners, "every stream's listener goes", until=lambda n: n == 0)
