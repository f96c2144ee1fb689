"""GET /metrics: Prometheus text, on both backends, and a real worker's own endpoint."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.api.metrics import refresh as refresh_gauges
from app.config import Settings
from app.domain import Wakeup
from app.runtime.inprocess import InProcessBroker
from tests.batch_helpers import create, eventually, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, Actor, LiveServer, free_port, postgres_only
from tests.test_events import sse_events
from tests.workers_proc import WorkerProcess

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}
NAMES = {
    "batchd_batches",
    "batchd_items_processed",
    "batchd_chunk_duration_seconds",
    "batchd_queue_depth",
    "batchd_sse_subscribers",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """Every family name and every sample, keyed by (sample name, labels)."""
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    names, samples = parse(r.text)
    assert names >= NAMES, NAMES - names
    return samples


async def test_metrics_rise_after_a_batch_completes(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 120)
    before = await scrape(client)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids[:100], "params": APPROVE, "chunk_size": 25},
    )
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["success"]) == ("completed", 100)
    bad = {**APPROVE, "form_data": {"category": "bogus"}}  # fails item by item in a chunk
    batch = await create(
        alice, {"type": "task.approve", "ids": setup.task_ids[100:], "params": bad}
    )
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["failed"]) == ("completed", 20)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    items = "batchd_items_processed_total"
    assert delta(items, type="task.approve", outcome="success") == 100
    assert delta(items, type="task.approve", outcome="failed") == 20
    chunks = delta("batchd_chunk_duration_seconds_count", type="task.approve")
    assert chunks >= 5  # 100 items in chunks of 25, then 20 more
    assert delta("batchd_chunk_duration_seconds_sum", type="task.approve") > 0
    assert value(after, "batchd_batches", status="completed") == 2
    assert value(after, "batchd_batches", status="running") == 0


async def test_batches_by_status(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)
    ids = setup.task_ids
    body = {"type": "task.approve", "params": APPROVE, "start_suspended": True}
    for part in (ids[0:10], ids[10:20]):
        b = await create(alice, {**body, "ids": part})
        assert b["status"] == "suspended"
    cancelled = await create(alice, {**body, "ids": ids[20:25]})
    r = await alice.delete(f"/api/v1/batches/{cancelled['id']}")
    assert r.status_code == 200, r.text
    done = await create(alice, {"type": "task.approve", "params": APPROVE, "ids": ids[25:]})
    await wait_for(alice, done["id"])

    samples = await scrape(client)
    got = {s: value(samples, "batchd_batches", status=s) for s in ("suspended", "cancelled")}
    assert got == {"suspended": 2, "cancelled": 1}
    assert value(samples, "batchd_batches", status="completed") == 1
    # Every known status is exported, 0 when there is none (so a graph drops to 0).
    assert ("batchd_batches", frozenset({("status", "aborted")})) in samples
    assert value(samples, "batchd_batches", status="aborted") == 0


@pytest.mark.external_workers  # no job or cron moves the batches: the test does
async def test_one_stuck_batch_shows_in_the_heartbeat_age_even_through_re_wakes(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    """``batchd_batch_heartbeat_age_seconds{status}`` is the age of the batch that has
    gone longest without progress, per status — one stuck batch among healthy ones is
    what ``BatchdBatchStuck`` needs; a recovery re-wake (``updated_at`` touched, the
    progress sequence not) does not reset it, progress does."""
    from datetime import timedelta

    from sqlalchemy import update

    from app.db.base import utcnow
    from app.models import Batch

    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    body = {"type": "task.approve", "params": APPROVE, "start_suspended": True}
    stuck, healthy, waiting = [
        (await create(alice, {**body, "ids": [task]}))["id"] for task in setup.task_ids
    ]

    async def set_batch(batch_id: int, **values: object) -> None:
        async with sessionmaker() as s:
            await s.execute(update(Batch).where(Batch.id == batch_id).values(**values))
            await s.commit()

    now = utcnow()
    await set_batch(stuck, status="running", updated_at=now - timedelta(seconds=400))
    await set_batch(healthy, status="running", updated_at=now - timedelta(seconds=5))
    await set_batch(waiting, status="created", updated_at=now - timedelta(seconds=200))

    def ages(samples: Samples) -> dict[str, float]:
        return {
            s: value(samples, "batchd_batch_heartbeat_age_seconds", status=s)
            for s in ("created", "seeding", "running")
        }

    first = ages(await scrape(client))
    assert 400 <= first["running"] < 500 and 200 <= first["created"] < 300
    assert first["seeding"] == 0

    await set_batch(stuck, updated_at=utcnow())  # what the recovery cron's re-wake does
    again = ages(await scrape(client))
    assert again["running"] >= first["running"]  # still stuck: no progress was made

    await set_batch(stuck, updated_at=utcnow(), progress_seq=Batch.progress_seq + 1)
    moved = ages(await scrape(client))
    assert moved["running"] < 100  # the healthy batch's few seconds now lead
    assert moved["created"] >= first["created"]


async def test_queue_depth_per_priority(app: FastAPI, client: httpx.AsyncClient) -> None:
    # A broker nobody takes from keeps what it is given.
    broker = InProcessBroker()
    for priority in ("high", "low", "low"):
        await broker.enqueue(Wakeup("seed", 1, priority))
    await broker.enqueue(Wakeup("seed", 2, "low", key="dup"))
    await broker.enqueue(Wakeup("seed", 2, "low", key="dup"))  # deduplicated
    assert await broker.depth() == {"high": 1, "normal": 0, "low": 3}

    if ON_POSTGRES:  # the app's own queue: ZCARD of each arq queue
        before = await scrape(client)  # the crons wait in batchd:high already
        for priority in ("low", "normal", "normal"):  # deferred: nobody takes them yet
            await app.state.queue.enqueue(Wakeup("monitor", 424242, priority, defer=600))
        after = await scrape(client)
        for priority, added in (("normal", 2), ("low", 1)):
            got = value(after, "batchd_queue_depth", priority=priority)
            assert got - value(before, "batchd_queue_depth", priority=priority) == added
        assert ("batchd_queue_depth", frozenset({("priority", "high")})) in after
    else:
        await refresh_gauges(app.state.sessionmaker, broker)
        samples = await scrape(client)  # the app's idle runner: all zero again
        assert value(samples, "batchd_queue_depth", priority="low") == 0
        assert ("batchd_queue_depth", frozenset({("priority", "low")})) in samples


async def test_sse_subscribers_gauge(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 5)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        base = value(await scrape(client), "batchd_sse_subscribers")
        r = await client.post(
            "/api/v1/batches",
            headers=alice.headers,
            json={
                "type": "task.approve",
                "ids": setup.task_ids,
                "params": APPROVE,
                "start_suspended": True,
            },
        )
        batch_id = r.json()["id"]
        url = f"/api/v1/batches/{batch_id}/events"
        async with (
            client.stream("GET", url, headers=alice.headers) as one,
            client.stream("GET", url, headers=alice.headers) as two,
        ):
            streams = [sse_events(s) for s in (one, two)]  # kept: dropping one closes it
            first = [await anext(events) for events in streams]
            assert [e["event"] for e in first] == ["progress", "progress"]
            assert value(await scrape(client), "batchd_sse_subscribers") == base + 2
        await eventually(  # the server notices the disconnects
            lambda: scrape(client),
            "the subscriber gauge drops back",
            until=lambda text: value(text, "batchd_sse_subscribers") == base,
        )


@pytest.mark.parametrize("settings_overrides", [{"metrics": False}])
async def test_metrics_off(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    setup = await expense_setup(sessionmaker, admin, alice, bob, 10)
    labels = {"type": "task.approve", "outcome": "success"}
    before = REGISTRY.get_sample_value("batchd_items_processed_total", labels)
    batch = await create(alice, {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE})
    assert (await wait_for(alice, batch["id"]))["success"] == 10
    after = REGISTRY.get_sample_value("batchd_items_processed_total", labels)
    assert after == before  # the hooks did nothing
    metrics.configure(enabled=True)  # the process-wide switch, for the tests that follow


async def test_text_format_parses_and_is_documented(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    r = await client.get("/metrics")
    names, _ = parse(r.text)
    assert names >= NAMES
    for line in r.text.splitlines():  # every family is described (HELP) and typed (TYPE)
        if line.startswith("# HELP batchd_"):
            assert len(line.split(" ", 3)[3]) > 10
    op = app.openapi()["paths"]["/metrics"]["get"]
    assert op["operationId"] == "get_metrics" and op["tags"] == ["monitoring"]
    assert "text/plain" in op["responses"]["200"]["content"]
    assert op["security"] == []  # public, and said so


@postgres_only
@pytest.mark.external_workers
async def test_worker_process_serves_its_own_metrics(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    port = free_port()
    worker = WorkerProcess(settings.model_copy(update={"worker_metrics_port": port}))
    try:
        await worker.ready()
        setup = await expense_setup(sessionmaker, admin, alice, bob, 60)
        batch = await create(
            alice,
            {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "chunk_size": 20},
        )
        assert (await wait_for(alice, batch["id"]))["success"] == 60
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200, worker.output()
        names, samples = parse(r.text)
        assert {"batchd_items_processed", "batchd_chunk_duration_seconds"} <= names
        items = value(
            samples, "batchd_items_processed_total", type="task.approve", outcome="success"
        )
        assert items == 60  # a fresh process: exactly this batch's chunks
        assert value(samples, "batchd_chunk_duration_seconds_count", type="task.approve") >= 3
        assert await worker.terminate() == 0
    finally:
        worker.stop()
