"""SSE progress stream against a real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.events import watch_count
from tests.batch_helpers import eventually, expense_setup
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
        async with client.stream("GET", url, headers=alice.headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            reader = Reader(stream)
            first = await reader.next(30)  # connected: the state it is in, at once
            assert first is not None
            r = await client.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
            assert r.status_code == 200, r.text
            events = [first]
            while (e := await reader.next(60, pings=True)) is not None:
                events.append(e)

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
        # Every event names the creator as a person, not only by id.
        assert {(e["data"]["creator_id"], e["data"]["creator_name"]) for e in events} == {
            (alice.id, "Alice")
        }
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


async def create_suspended(client: httpx.AsyncClient, actor: Actor, ids: list[int]) -> int:
    """A batch that waits (suspended) until activated, so streams can connect first."""
    r = await client.post(
        "/api/v1/batches",
        headers=actor.headers,
        json={
            "type": "task.approve",
            "ids": ids,
            "params": APPROVE,
            "chunk_size": 10,
            "start_suspended": True,
        },
    )
    assert r.status_code == 202, r.text
    batch_id: int = r.json()["id"]
    return batch_id


class Reader:
    """Reads a stream in a task of its own, so waiting for an event with a time limit
    never cancels (and so closes) the stream's iterator."""

    def __init__(self, response: httpx.Response) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(response))

    async def _pump(self, response: httpx.Response) -> None:
        try:
            async for e in sse_events(response):
                await self.queue.put(e)
        finally:
            await self.queue.put(None)

    async def next(self, within: float, *, pings: bool = False) -> dict[str, Any] | None:
        """The next event (pings skipped unless asked for), or None after ``within``
        seconds or at the end of the stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            try:
                e = await asyncio.wait_for(self.queue.get(), left)
            except TimeoutError:
                return None
            if e is None or pings or e["event"] != ":":
                return e
        return None

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def _none(counts: tuple[int, int]) -> bool:
    return counts == (0, 0)


@pytest.mark.parametrize("settings_overrides", [{"sse_ping_interval": 0.3}])
async def test_ping_resume_and_no_connection_held(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 40)
    app = live_server.app
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        batch_id = await create_suspended(client, alice, setup.task_ids)
        url = f"/api/v1/batches/{batch_id}/events"
        async with client.stream("GET", url, headers=alice.headers) as r:
            events = Reader(r)
            first = await events.next(5)
            assert first is not None and first["event"] == "progress"
            latest = first["id"]
            # A comment ping after BATCH_SSE_PING_INTERVAL of silence (nothing changes).
            ping = await events.next(2, pings=True)
            assert ping == {"event": ":", "data": "ping"}
            await events.close()

        # Reconnecting with the latest id: nothing until something changes.
        resumed = {**alice.headers, "Last-Event-ID": latest}
        async with client.stream("GET", url, headers=resumed) as r:
            events = Reader(r)
            assert await events.next(0.8) is None
            # No database connection is held while the client waits.
            assert app.state.engine.pool.checkedout() <= 2  # a passing read, a cron pass
            act = await client.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
            assert act.status_code == 200, act.text
            moved = await events.next(10)
            assert moved is not None and moved["event"] in ("progress", "end")
            assert int(moved["id"]) > int(latest)
            await events.close()

        # With an older id (or an unknown one): the current state at once.
        for stale in ("0", latest, "not-a-number"):
            again = await collect(client, url, {**alice.headers, "Last-Event-ID": stale})
            kinds = [e["event"] for e in again if e["event"] != ":"]
            assert kinds[-1] == "end" and kinds[0] == "progress"


async def test_finished_batch_ends_at_once(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        r = await client.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={"type": "task.approve", "ids": setup.task_ids, "params": APPROVE},
        )
        batch_id = r.json()["id"]

        async def status() -> str:
            got = await client.get(f"/api/v1/batches/{batch_id}", headers=alice.headers)
            return str(got.json()["status"])

        await eventually(status, "the batch completes", until=lambda s: s == "completed")
        url = f"/api/v1/batches/{batch_id}/events"
        started = asyncio.get_running_loop().time()
        events = await collect(client, url, alice.headers)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert [e["event"] for e in events] == ["progress", "end"]
        assert events[0]["id"] == events[1]["id"]
        assert events[1]["data"]["status"] == "completed"
        assert live_server.app.state.progress.listener_count() == 0  # never subscribed


async def test_disconnect_leaves_nothing_running(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 10)
    app = live_server.app
    bus = app.state.progress
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        batch_id = await create_suspended(client, alice, setup.task_ids)
        url = f"/api/v1/batches/{batch_id}/events"
        for _ in range(2):  # twice: a second round starts from a clean slate
            async with contextlib.AsyncExitStack() as stack:
                streams = []
                for _ in range(5):
                    r = await stack.enter_async_context(
                        client.stream("GET", url, headers=alice.headers)
                    )
                    streams.append(Reader(r))
                for reader in streams:
                    assert (await reader.next(5) or {}).get("event") == "progress"
                # One shared watch (one bus listener) for the five streams.
                assert bus.listener_count(batch_id) == 1
                assert watch_count(app) == 1

                # Five waiting streams hold no connection: between the shared watcher's
                # reads and the background passes (crons every 0.2-0.5 s here, any of
                # which may hold one for a moment) the pool comes back to at most one.
                async def checked_out() -> int:
                    return int(app.state.engine.pool.checkedout())

                await eventually(checked_out, "the pool is idle", until=lambda n: n <= 1)
                for reader in streams:
                    await reader.close()

            async def listening() -> tuple[int, int]:
                return bus.listener_count(), watch_count(app)

            await eventually(listening, "the streams' listeners and watch go", until=_none)
            leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("batchd-watch-")]
            for t in leftovers:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(t, 2)
            assert all(t.done() for t in leftovers)


async def test_progress_is_coalesced(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """Many small chunks: the stream sends at most ~10 progress events a second."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 600)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        batch_id = await create_suspended(client, alice, setup.task_ids)  # chunks of 10
        url = f"/api/v1/batches/{batch_id}/events"
        loop = asyncio.get_running_loop()
        arrivals: list[float] = []
        async with client.stream("GET", url, headers=alice.headers) as r:
            events = sse_events(r)
            assert (await anext(events)).get("event") == "progress"
            act = await client.post(f"/api/v1/batches/{batch_id}/activate", headers=alice.headers)
            assert act.status_code == 200
            started = loop.time()
            async for e in events:
                if e["event"] == "progress":
                    arrivals.append(loop.time())
                if e["event"] == "end":
                    assert e["data"]["success"] == 600
                    break
        elapsed = loop.time() - started
        assert len(arrivals) <= 10 * elapsed + 3, (len(arrivals), elapsed)
