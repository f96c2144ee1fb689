"""SSE progress stream against a real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.batch_helpers import expense_setup
from tests.conftest import Actor, LiveServer

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse ``text/event-stream`` into {event, id, data} dicts (comments → event ':')."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"event": ":", "data": line[1:].strip()}
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[key] = json.loads(value) if key == "data" else value


async def collect(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    events = []
    async with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for e in sse_events(r):
            events.append(e)
    return events


async def test_stream_reports_progress_then_end(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 1500)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        r = await client.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={
                "type": "task.approve",
                "filter": {"definition_key": "expense"},
                "params": APPROVE,
                "chunk_size": 25,
                # Paused, so the stream is connected before the work (fast on SQLite) runs.
                "start_suspended": True,
            },
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        assert r.json()["status"] == "suspended"
        url = f"/api/v1/batches/{batch_id}/events"
        streaming = asyncio.create_task(collect(client, url, alice.headers))
        await asyncio.sleep(0.3)
        r = await client.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
        assert r.status_code == 200, r.text
        events = await streaming

        kinds = [e["event"] for e in events if e["event"] != ":"]
        assert kinds[0] == "progress" and kinds[-1] == "end"
        assert set(kinds[:-1]) == {"progress"}
        end = events[-1]["data"]
        assert (end["status"], end["success"], end["total"], end["progress"]) == (
            "completed",
            1500,
            1500,
            1.0,
        )
        progress = [e for e in events if e["event"] == "progress"]
        seqs = [int(e["id"]) for e in progress]
        assert seqs == sorted(set(seqs)), "ids are the monotonic progress sequence"
        successes = [e["data"]["success"] for e in progress]
        assert successes == sorted(successes)
        assert progress[0]["data"]["status"] == "suspended"
        assert len(progress) >= 2  # saw the batch move, not just its end
        # distinct ids: never more than one event per change of the progress sequence
        assert len(progress) <= int(events[-1]["id"])

        # Reconnecting with the last id: nothing changed, so only the end event.
        again = await collect(client, url, {**alice.headers, "Last-Event-ID": events[-1]["id"]})
        assert [e["event"] for e in again] == ["end"]
        # A fresh client sees the current state first.
        fresh = await collect(client, url, alice.headers)
        assert [e["event"] for e in fresh] == ["progress", "end"]


async def test_stream_errors_are_json(live_server: LiveServer, alice: Actor, bob: Actor) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=10) as client:
        r = await client.get("/api/v1/batches/1/events")
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
        r = await client.get("/api/v1/batches/424242/events", headers=alice.headers)
        assert r.status_code == 404 and r.json()["error"] == "NotFound"
        created = await client.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={"type": "task.approve", "ids": [], "params": APPROVE},
        )
        r = await client.get(f"/api/v1/batches/{created.json()['id']}/events", headers=bob.headers)
        assert r.status_code == 404
