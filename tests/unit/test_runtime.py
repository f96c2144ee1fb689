"""The runtime seam without a database: the in-process broker's queue, the job table
adapted once (the in-process runner and arq run the same jobs and crons), and the one
build function."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from app.batches.jobs import job_table
from app.config import Settings
from app.domain import Wakeup
from app.runtime.arq_runner import arq_crons, arq_functions, cron_times
from app.runtime.context import JobContext
from app.runtime.factory import build_runtime
from app.runtime.inprocess import InProcessBroker, InProcessRunner
from app.runtime.progress import LocalProgressBus
from app.runtime.registry import Cron, JobTable


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": "sqlite+aiosqlite://", "redis_url": None}
    return Settings(**{**values, **overrides})


async def _nothing(ctx: JobContext) -> None:
    pass


async def test_broker_drops_a_key_already_queued_and_takes_it_again_once_taken() -> None:
    broker = InProcessBroker()
    await broker.enqueue(Wakeup("seed", 1, key="seed:1"))
    await broker.enqueue(Wakeup("seed", 1, key="seed:1"))
    await broker.enqueue(Wakeup("seed", 1))  # no key: never deduplicated
    assert (await broker.depth())["normal"] == 2

    assert (await broker.take()).key == "seed:1"
    await broker.enqueue(Wakeup("seed", 1, key="seed:1"))  # taken, so queued again
    assert (await broker.depth())["normal"] == 2


async def test_broker_depth_per_priority_and_highest_first() -> None:
    broker = InProcessBroker()
    for batch_id, priority in enumerate(("low", "normal", "high", "low", "unknown")):
        await broker.enqueue(Wakeup("execute", batch_id, priority))
    assert await broker.depth() == {"high": 1, "normal": 2, "low": 2}  # unknown: normal

    order = [(await broker.take()).batch_id for _ in range(5)]
    assert order == [2, 1, 4, 0, 3]  # by priority, then first come first served
    assert await broker.depth() == {"high": 0, "normal": 0, "low": 0}


async def test_deferred_wakeup_counts_once_due_and_stop_cancels_the_rest() -> None:
    broker = InProcessBroker()
    await broker.enqueue(Wakeup("monitor", 1, defer=3600))
    assert not broker.waiting() and broker.deferring()
    assert await broker.depth() == {"high": 0, "normal": 0, "low": 0}
    await broker.stop()
    assert not broker.deferring()


def test_arq_gets_the_same_jobs_and_crons_as_the_table() -> None:
    table = job_table(_settings(poll_time=2, recover_interval=120))
    assert [f.name for f in arq_functions(table)] == list(table.jobs)

    crons = arq_crons(table)
    assert [c.name for c in crons] == [f"cron:{c.name}" for c in table.crons]
    assert [c.name for c in crons] == [
        "cron:start_due",
        "cron:recover",
        "cron:auto_retry",
        "cron:deliver_due",
        "cron:purge",
    ]
    for adapted, entry in zip(crons, table.crons, strict=True):
        assert (adapted.second, adapted.minute) == cron_times(entry.every_s)
        assert adapted.unique and adapted.run_at_startup


def test_cron_times() -> None:
    assert cron_times(2) == (set(range(0, 60, 2)), None)
    assert cron_times(0.2) == (set(range(60)), None)  # at most once a second
    assert cron_times(120) == ({0}, set(range(0, 60, 2)))
    assert cron_times(3600) == ({0}, {0})


class _Ctx:
    """All the runner itself reads of its job context."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()


async def test_in_process_runner_runs_the_table_its_crons_and_its_start_hook() -> None:
    ran: list[str] = []

    async def job(ctx: JobContext, batch_id: int) -> None:
        ran.append(f"job {batch_id}")

    async def tick(ctx: JobContext) -> None:
        ran.append("tick")

    async def on_start(ctx: JobContext) -> None:
        ran.append("start")

    broker = InProcessBroker()
    table = JobTable(jobs={"job": job}, crons=[Cron(tick, 3600)], on_start=on_start)
    runner = InProcessRunner(broker, table, cast(JobContext, _Ctx()), workers=1)
    await runner.start()
    try:
        await broker.enqueue(Wakeup("job", 7))
        await asyncio.wait_for(runner.drained(), 5)
        assert sorted(ran) == ["job 7", "start", "tick"]
    finally:
        await runner.stop()


async def test_local_bus_nudges_listeners_and_leaves_none_behind() -> None:
    bus = LocalProgressBus()
    async with bus.listen(3) as nudged:
        assert bus.listener_count(3) == 1
        await bus.publish(4)
        assert not nudged.is_set()
        await bus.publish(3)
        assert nudged.is_set()
    assert bus.listener_count() == 0


async def test_one_build_for_both_backends() -> None:
    table = JobTable(jobs={}, crons=[Cron(_nothing, 60)])
    embedded = build_runtime(_settings(), cast(Any, None), table)
    assert embedded.runner is not None  # the API process runs the jobs itself
    assert embedded.ctx.queue is embedded.broker
    assert embedded.ctx.progress is embedded.progress

    on_redis = build_runtime(_settings(redis_url="redis://127.0.0.1:1/0"), cast(Any, None), table)
    assert on_redis.runner is None  # `batchd worker` runs them
    assert on_redis.ctx.queue is on_redis.broker
    await on_redis.progress.stop()  # never connected: closing only frees the client
