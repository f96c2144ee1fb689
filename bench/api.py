"""The API in this process (``create_app`` + httpx ``ASGITransport``, lifespan running),
and one measured batch: POST → poll ``GET /batches/{id}`` until a final status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app

FINAL = ("completed", "cancelled", "aborted")


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://batchd.bench", timeout=120
        ) as client:
            yield Api(app, client)


@dataclass
class BatchRun:
    """One batch, POST to final status (or to the time limit: then it is cancelled and
    the rate is what got done in the time)."""

    batch: dict[str, Any]
    post_latency_s: float
    end_to_end_s: float
    server_s: float | None
    """created_at → finished_at, from the batch's own timestamps."""
    timed_out: bool = False
    done_at_limit: int = 0
    total_at_limit: int = 0

    @property
    def items(self) -> int:
        return self.done_at_limit if self.timed_out else int(self.batch["total"])

    @property
    def items_per_s(self) -> float:
        return self.items / self.end_to_end_s if self.end_to_end_s > 0 else 0.0

    @property
    def all_succeeded(self) -> bool:
        b = self.batch
        return b["status"] == "completed" and b["success"] == b["total"]

    def problem(self) -> str | None:
        b = self.batch
        if self.timed_out:
            return (
                f"TIMEOUT: {self.done_at_limit} of {self.total_at_limit} done in "
                f"{self.end_to_end_s:.0f}s (BENCH_TIMEOUT), then cancelled"
            )
        if not self.all_succeeded:
            return (
                f"BATCH {b['status']}: success={b['success']} failed={b['failed']} "
                f"ignored={b['ignored']} total={b['total']}"
            )
        return None


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _done(batch: dict[str, Any]) -> int:
    return int(batch["success"]) + int(batch["failed"]) + int(batch["ignored"])


async def _get(client: httpx.AsyncClient, batch_id: int, headers: dict[str, str]) -> Any:
    g = await client.get(f"/api/v1/batches/{batch_id}", headers=headers)
    if g.status_code != 200:
        raise RuntimeError(f"GET /batches/{batch_id}: {g.status_code} {g.text}")
    return g.json()


async def run_batch(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    limit_s: float,
    poll: float,
    report_every: float = 10.0,
    progress: Callable[[str], None] = lambda _: None,
) -> BatchRun:
    t0 = time.perf_counter()
    r = await client.post("/api/v1/batches", json=body, headers=headers)
    post_latency = time.perf_counter() - t0
    if r.status_code != 202:
        raise RuntimeError(f"POST /batches: {r.status_code} {r.text}")
    batch_id = r.json()["id"]
    deadline = t0 + limit_s
    next_report = t0 + report_every
    while True:
        batch: dict[str, Any] = await _get(client, batch_id, headers)
        if batch["status"] in FINAL:
            break
        now = time.perf_counter()
        if now >= next_report:
            next_report = now + report_every
            progress(
                f"batch {batch_id} {batch['status']} after {now - t0:.0f}s: "
                f"{batch['success']} success, {batch['failed']} failed, "
                f"{batch['pending']} pending, {batch['running']} running of {batch['total']}"
            )
        if now > deadline:
            return await _give_up(client, batch_id, headers, batch, now - t0, post_latency)
        await asyncio.sleep(poll)
    elapsed = time.perf_counter() - t0
    created, finished = _ts(batch.get("created_at")), _ts(batch.get("finished_at"))
    return BatchRun(
        batch=batch,
        post_latency_s=post_latency,
        end_to_end_s=elapsed,
        server_s=(finished - created).total_seconds() if created and finished else None,
    )


async def _give_up(
    client: httpx.AsyncClient,
    batch_id: int,
    headers: dict[str, str],
    batch: dict[str, Any],
    elapsed: float,
    post_latency: float,
) -> BatchRun:
    """Time limit: cancel the batch (DELETE) and wait until nothing runs any more, so
    the next measurement starts on a quiet worker."""
    done, total = _done(batch), int(batch["total"])
    r = await client.delete(f"/api/v1/batches/{batch_id}", headers=headers)
    if r.status_code not in (200, 202, 204):
        raise RuntimeError(f"DELETE /batches/{batch_id}: {r.status_code} {r.text}")
    for _ in range(1200):
        batch = await _get(client, batch_id, headers)
        if batch["status"] in FINAL and not batch.get("running"):
            break
        await asyncio.sleep(0.1)
    return BatchRun(
        batch,
        post_latency,
        elapsed,
        None,
        timed_out=True,
        done_at_limit=done,
        total_at_limit=total,
    )
