"""Webhook delivery latency and outbox throughput (``python -m bench.webhooks``).

Latency: a batch that completes in its create request (its only item does not exist)
commits ``batch.completed`` with the request; the time from the event's ``timestamp``
(noted just before that commit) to the receiver getting the POST, for ``--latency``
batches created one after another. Throughput: ``--burst`` such batches created by 16
concurrent clients; deliveries per second from the first create to the last delivery.

The API and the jobs run in this process: the embedded default (SQLite + the in-process
runner), or with ``--postgres URL --redis URL`` PostgreSQL + arq, the jobs in one
``batchd worker`` process beside this one (as deployed: the API here only enqueues). The
receiver is an ``http.server`` in a process of its own on a loopback port (hence
``BATCH_WEBHOOK_ALLOW_PRIVATE=true``), so its CPU is not counted as the sender's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.process
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.config import Settings
from app.db.base import Base
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine
from app.main import create_app
from app.workflow.users import create_user
from bench.procs import Worker

BODY = {"type": "task.approve", "ids": [900_001], "params": {"decision": "approve"}}


class Received:
    """What the receiver process reported: per delivery, event → receipt seconds and
    when it arrived (filled by a thread of this process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.at: list[float] = []


def _serve(port_out: Any, reports: Any) -> None:
    """The receiver process: a threading HTTP server answering 204, reporting (arrived
    at, event → arrival seconds) of each POST on ``reports``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.time()
            sent = datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
            reports.put((now, now - sent))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.put(server.server_address[1])
    server.serve_forever()


def start_receiver(got: Received) -> tuple[multiprocessing.process.BaseProcess, str]:
    """The receiver in a process of its own (as a real receiver is: its CPU is not the
    sender's), and a thread here that collects its reports into ``got``."""
    mp = multiprocessing.get_context("spawn")
    port_out, reports = mp.Queue(), mp.Queue()
    proc = mp.Process(target=_serve, args=(port_out, reports), daemon=True)
    proc.start()
    port = port_out.get(timeout=30)

    def collect() -> None:
        while True:
            at, latency = reports.get()
            with got.lock:
                got.latencies.append(latency)
                got.at.append(at)

    threading.Thread(target=collect, daemon=True).start()
    return proc, f"http://127.0.0.1:{port}/hook"


async def wait_count(got: Received, n: int, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while len(got.latencies) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(got.latencies)} of {n} deliveries arrived")
        await asyncio.sleep(0.01)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def late_first_attempts(app: Any) -> list[tuple[float, float, int]]:
    """Deliveries whose first attempt began more than 1 s after the row was written:
    (first attempt delay, delivered delay, attempts)."""
    from sqlalchemy import select

    from app.models import WebhookDelivery

    async with app.state.sessionmaker() as s:
        rows = (await s.scalars(select(WebhookDelivery))).all()
    out = []
    for r in rows:
        if r.first_attempt_at is None or r.delivered_at is None:
            continue  # received, its outcome not written yet
        first = (r.first_attempt_at - r.created_at).total_seconds()
        if first > 1:
            out.append((first, (r.delivered_at - r.created_at).total_seconds(), r.attempts))
    return out


async def drain_outbox(app: Any, got: Received, n: int) -> float:
    """``n`` pending deliveries written at once (copies of the last one), then woken
    together: deliveries per second of the outbox alone, batches aside."""
    from sqlalchemy import select

    from app.domain import Wakeup
    from app.models import WebhookDelivery
    from app.webhooks import outbox

    got.latencies.clear()
    got.at.clear()
    async with app.state.sessionmaker() as s:
        last = await s.scalar(select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(1))
        assert last is not None
        rows = [
            WebhookDelivery(
                subscription_id=last.subscription_id,
                batch_id=last.batch_id,
                event=last.event,
                msg_id=outbox.new_msg_id(),
                body=last.body,
                status="pending",
                attempts=0,
                next_attempt_at=last.created_at,
                created_at=last.created_at,
            )
            for _ in range(n)
        ]
        s.add_all(rows)
        await s.commit()
        ids = [r.id for r in rows]
    start = time.time()
    for i in ids:
        await app.state.queue.enqueue(Wakeup(outbox.JOB, i, outbox.PRIORITY))
    await wait_count(got, n)
    return n / (max(got.at) - start)


async def run(args: argparse.Namespace) -> None:
    if args.postgres:
        url, redis = args.postgres, args.redis
        engine = create_engine(url, pool_size=2)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await upgrade_to_head(engine)
        await engine.dispose()
        backend = "PostgreSQL + Redis (arq)"
    else:
        url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
        redis = None
        backend = "SQLite + in-process runner"
    settings = Settings(database_url=url, redis_url=redis, webhook_allow_private=True)
    got = Received()
    server, hook_url = start_receiver(got)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        worker = None
        if redis:  # the deployment's shape: the API here, a `batchd worker` beside it
            worker = Worker(
                url,
                redis,
                Path(tempfile.mkdtemp()) / "webhooks-worker.log",
                {"BATCH_WEBHOOK_ALLOW_PRIVATE": "true"},
            )
            await worker.start()
        try:
            async with app.state.sessionmaker() as s:
                user, token = await create_user(s, "Bench", role="admin", department_id=1)
                await s.commit()
            headers = {"Authorization": f"Bearer {token}"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as c:
                r = await c.post(
                    "/api/v1/webhooks",
                    json={"url": hook_url, "events": ["batch.completed"]},
                    headers=headers,
                )
                assert r.status_code == 201, r.text
                for _ in range(args.latency):
                    r = await c.post("/api/v1/batches", json=BODY, headers=headers)
                    assert r.status_code == 202, r.text
                    await wait_count(got, len(got.at) + 1)
                lat = [x * 1000 for x in got.latencies]
                late = await late_first_attempts(app)
                got.latencies.clear()
                got.at.clear()

                sem = asyncio.Semaphore(16)

                async def one() -> None:
                    async with sem:
                        r = await c.post("/api/v1/batches", json=BODY, headers=headers)
                        assert r.status_code == 202, r.text

                start = time.time()
                await asyncio.gather(*(one() for _ in range(args.burst)))
                created = time.time()
                await wait_count(got, args.burst)
                end = max(got.at)
                drain = await drain_outbox(app, got, args.burst)
        finally:
            if worker is not None:
                await worker.stop()
    server.terminate()
    if args.postgres:
        engine = create_engine(url, pool_size=1)
        async with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()
    print(f"{datetime.now().isoformat(timespec='seconds')} · {platform.node()} · {backend}")
    print(
        f"latency over {len(lat)} batches (event noted → receiver): p50 "
        f"{statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms"
    )
    if late:
        print(f"  first attempts later than 1 s: {len(late)}: {late[:5]}")
    print(
        f"burst of {args.burst}: created in {created - start:.2f} s, all delivered after "
        f"{end - start:.2f} s → {args.burst / (end - start):.0f} deliveries/s end to end"
    )
    print(f"outbox alone: {args.burst} pending deliveries drained at {drain:.0f} deliveries/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--postgres", help="a database this bench may wipe")
    parser.add_argument("--redis")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
