"""The ``scale`` phase: one ``task.approve`` filter batch over ``BENCH_SCALE_ITEMS``
(default 1 000 000) items, served by a real ``batchd serve`` (uvicorn) subprocess on a
loopback port, while the API is sampled.

Measured:

- items/s (POST → final status; the status is polled from the database, not through
  the API, so the bench's own polling is no load on the server being measured), POST
  latency (through real HTTP), the worker's peak RSS;
- time from the POST to the first applied item: a separate asyncpg connection, in a
  thread with its own event loop (the bench's clients cannot delay it), polls
  ``SELECT max(id) FROM tasks`` every ``BENCH_FIRST_ITEM_POLL`` seconds (2 ms) until it
  passes the last seeded task id — the first ``finance`` task is inserted in the same
  transaction that completes the first manager task; one step down the primary key;
- p99 latency of ``GET /api/v1/batches/{id}`` and ``GET /api/v1/tasks?page_size=50``
  (as the manager) while idle (before the POST, the same rows loaded, the GET of a
  finished batch row) and while the batch runs: ``BENCH_API_CLIENTS`` clients per
  endpoint in this process, each sending one request every ``BENCH_API_INTERVAL``
  seconds (a modest rate), over keep-alive connections;
- an SSE subscriber on ``/api/v1/batches/{id}/events``: progress events per second
  between its first event and the ``end`` event.

Why a subprocess server: the API then has its own interpreter (no GIL shared with the
bench's clients, pollers and samplers), so what the clients measure is the server's
latency plus a loopback hop, as a real client would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from app.db.session import transaction
from app.models import Batch
from bench.api import FINAL
from bench.config import BenchConfig


@dataclass
class Latencies:
    """Seconds per request for one endpoint, and how many answered other than 200."""

    samples: list[float] = field(default_factory=list)
    errors: int = 0

    def p(self, q: float) -> float | None:
        if len(self.samples) < 2:
            return None
        return statistics.quantiles(self.samples, n=1000, method="inclusive")[int(q * 1000) - 1]

    def describe(self) -> str:
        p50, p99 = self.p(0.5), self.p(0.99)
        if p50 is None or p99 is None:
            return f"{len(self.samples)} samples"
        return (
            f"p50 {p50 * 1000:.1f} / p99 {p99 * 1000:.1f} / max {max(self.samples) * 1000:.1f} ms"
            f" ({len(self.samples)} samples" + (f", {self.errors} errors)" if self.errors else ")")
        )


async def sample_api(
    http: httpx.AsyncClient,
    paths: dict[str, str],
    headers: dict[str, str],
    *,
    clients: int,
    interval: float,
    stop: asyncio.Event,
    at_least: int = 0,
    max_s: float = float("inf"),
) -> dict[str, Latencies]:
    """``clients`` loops per endpoint, one request each every ``interval`` seconds
    (or back to back when a request takes longer), until ``stop`` is set (and, if
    ``at_least`` is given, each endpoint has that many samples — or ``max_s`` passed)."""
    out = {name: Latencies() for name in paths}
    give_up = time.perf_counter() + max_s

    async def loop(name: str, path: str, offset: float) -> None:
        await asyncio.sleep(offset)
        lat = out[name]
        while not (
            stop.is_set() and (len(lat.samples) >= at_least or time.perf_counter() > give_up)
        ):
            t0 = time.perf_counter()
            try:
                r = await http.get(path, headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = time.perf_counter() - t0
            if ok:
                lat.samples.append(elapsed)
            else:
                lat.errors += 1
            await asyncio.sleep(max(0.0, interval - elapsed))

    spread = interval / max(clients * len(paths), 1)
    loops = [
        loop(name, path, spread * (i * clients + c))
        for i, (name, path) in enumerate(paths.items())
        for c in range(clients)
    ]
    await asyncio.gather(*loops)
    return out


async def count_progress_events(
    http: httpx.AsyncClient, batch_id: int, headers: dict[str, str]
) -> tuple[int, float]:
    """Subscribe to the batch's SSE stream until its ``end`` event: (progress events,
    seconds from the first event to the end)."""
    events, first, last = 0, 0.0, 0.0
    async with http.stream(
        "GET", f"/api/v1/batches/{batch_id}/events", headers=headers, timeout=None
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"GET /batches/{batch_id}/events: {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("event:"):
                continue
            now = time.perf_counter()
            name = line.split(":", 1)[1].strip()
            if name == "progress":
                events += 1
                first = first or now
            last = now
            if name == "end":
                break
    return events, (last - first) if first else 0.0


async def sample_idle(
    cfg: BenchConfig, http: httpx.AsyncClient, idle_batch_id: int, headers: dict[str, str]
) -> dict[str, Latencies]:
    """The same requests as during the batch, before its POST (same rows loaded):
    ``BENCH_API_SAMPLES`` per endpoint at the same pace, or what ``BENCH_API_IDLE_S``
    seconds give (a slow endpoint answers fewer)."""
    stop = asyncio.Event()
    stop.set()
    return await sample_api(
        http,
        {"batch": f"/api/v1/batches/{idle_batch_id}", "tasks": "/api/v1/tasks?page_size=50"},
        headers,
        clients=cfg.api_clients,
        interval=cfg.api_interval,
        stop=stop,
        at_least=cfg.api_samples,
        max_s=cfg.api_idle_s,
    )


class FirstItemProbe:
    """``perf_counter()`` when a task newer than ``after_task_id`` first exists (the first
    approval's ``finance`` task), polled every ``every`` seconds on a connection of its
    own — in a thread with its own event loop, so the bench's HTTP clients and SSE
    subscriber (this process's loop) cannot delay the observation."""

    def __init__(self, dsn: str, after_task_id: int, every: float) -> None:
        self.dsn, self.after_task_id, self.every = dsn, after_task_id, every
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.found: float | None = None
        self.thread = threading.Thread(target=self._run, name="first-item-probe", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(10)  # the connection is open before the POST

    def finish(self) -> float | None:
        self.stop.set()
        self.thread.join(10)
        return self.found

    def _run(self) -> None:
        asyncio.run(self._poll())

    async def _poll(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            self.ready.set()
            # max(id) is one step down the primary key whatever the plan; a prepared
            # "id > $1" turns generic after five runs and scanned the whole table.
            probe = "SELECT max(id) FROM tasks"
            while not self.stop.is_set():
                if (await conn.fetchval(probe) or 0) > self.after_task_id:
                    self.found = time.perf_counter()
                    return
                await asyncio.sleep(self.every)
        finally:
            self.ready.set()
            await conn.close()


async def finished_batch(sm: Any, creator_id: int) -> int:
    """A completed ``task.approve`` batch row of the manager, for the idle GETs (no
    worker ever picks it up: it is final)."""
    async with transaction(sm) as session:
        batch = Batch(
            type="task.approve",
            status="completed",
            creator_id=creator_id,
            params={},
            chunk_size=1000,
            total=0,
        )
        session.add(batch)
        await session.flush()
        return int(batch.id)


@dataclass
class ScaleRun:
    items: int = 0
    seconds: float = 0.0
    post_latency_s: float = 0.0
    first_item_s: float | None = None
    timed_out: bool = False
    batch: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, Latencies] = field(default_factory=dict)
    busy: dict[str, Latencies] = field(default_factory=dict)
    sse_events: int = 0
    sse_seconds: float = 0.0

    @property
    def sse_per_s(self) -> float | None:
        return self.sse_events / self.sse_seconds if self.sse_seconds > 0 else None

    def p99_ms(self, which: dict[str, Latencies]) -> float | None:
        values = [p for lat in which.values() if (p := lat.p(0.99)) is not None]
        return round(1000 * max(values), 2) if values else None


async def run_scale_batch(
    cfg: BenchConfig,
    http: httpx.AsyncClient,
    db_status: Callable[[int], Any],
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    last_task_id: int,
    limit_s: float,
    progress: Callable[[str], None],
) -> ScaleRun:
    """POST (real HTTP) → final status, with the first-item probe, the busy API
    samples and the SSE subscriber running alongside."""
    run = ScaleRun()
    tasks_path = "/api/v1/tasks?page_size=50"
    prober = FirstItemProbe(cfg.asyncpg_dsn(), last_task_id, cfg.first_item_poll)
    await asyncio.to_thread(prober.start)
    t0 = time.perf_counter()
    r = await http.post("/api/v1/batches", json=body, headers=headers)
    run.post_latency_s = time.perf_counter() - t0
    if r.status_code != 202:
        prober.finish()
        raise RuntimeError(f"POST /batches: {r.status_code} {r.text}")
    batch_id = int(r.json()["id"])
    busy_stop = asyncio.Event()
    sampler = asyncio.create_task(
        sample_api(
            http,
            {"batch": f"/api/v1/batches/{batch_id}", "tasks": tasks_path},
            headers,
            clients=cfg.api_clients,
            interval=cfg.api_interval,
            stop=busy_stop,
        )
    )
    sse = asyncio.create_task(count_progress_events(http, batch_id, headers))
    deadline = t0 + limit_s
    next_report = t0 + 10
    status = "pending"
    try:
        while True:
            status = await db_status(batch_id)
            now = time.perf_counter()
            if status in FINAL:
                break
            if now > deadline:
                run.timed_out = True
                await http.delete(f"/api/v1/batches/{batch_id}", headers=headers)
                break
            if now >= next_report:
                next_report = now + 10
                progress(f"scale batch {batch_id} {status} after {now - t0:.0f}s")
            await asyncio.sleep(cfg.poll)
        run.seconds = time.perf_counter() - t0
    finally:
        busy_stop.set()
        run.busy = await sampler
        found = await asyncio.to_thread(prober.finish)
        run.first_item_s = found - t0 if found is not None else None  # None: never seen
        with contextlib.suppress(TimeoutError):
            run.sse_events, run.sse_seconds = await asyncio.wait_for(sse, 30)
        if not sse.done():
            sse.cancel()
    if run.timed_out:  # wait until nothing runs any more (the next phase's worker is quiet)
        for _ in range(1200):
            if await db_status(batch_id) in FINAL:
                break
            await asyncio.sleep(0.1)
    g = await http.get(f"/api/v1/batches/{batch_id}", headers=headers)
    run.batch = g.json()
    done = int(run.batch["success"]) + int(run.batch["failed"]) + int(run.batch["ignored"])
    run.items = done if run.timed_out else int(run.batch["total"])
    return run
