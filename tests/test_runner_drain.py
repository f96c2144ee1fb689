"""``InProcessRunner.drained``: what the tests' ``idle`` relies on, on a runner of its
own (no app, no database)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from app.domain import Wakeup
from app.runtime.context import JobContext
from app.runtime.inprocess import InProcessBroker, InProcessRunner
from app.runtime.registry import Cron, JobTable
from tests.batch_helpers import eventually


class _Ctx:
    """All the runner itself reads of its job context."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()


async def _runner(jobs: dict[str, Any], crons: list[Cron] | None = None) -> InProcessRunner:
    table = JobTable(jobs=jobs, crons=crons or [])
    runner = InProcessRunner(InProcessBroker(), table, cast(JobContext, _Ctx()), workers=2)
    await runner.start()
    return runner


async def test_drained_waits_for_follow_ups_but_not_for_later_deferrals() -> None:
    ran: list[tuple[str, int]] = []
    started: list[int] = []
    runner: InProcessRunner

    async def first(ctx: Any, batch_id: int) -> None:
        await asyncio.sleep(0)  # a job that yields before it enqueues its follow-up
        await runner.broker.enqueue(Wakeup("second", batch_id))
        await runner.broker.enqueue(Wakeup("second", batch_id + 100, defer=3600))  # due later
        ran.append(("first", batch_id))

    async def second(ctx: Any, batch_id: int) -> None:
        started.append(batch_id)
        await asyncio.sleep(0.01)  # a job that takes a moment
        ran.append(("second", batch_id))

    runner = await _runner({"first": first, "second": second})
    try:
        await runner.broker.enqueue(Wakeup("first", 1))
        await asyncio.wait_for(runner.drained(), 5)
        assert ran == [("first", 1), ("second", 1)]  # not the one due in an hour

        await runner.broker.enqueue(Wakeup("second", 2, defer=0.05))  # due soon: counts once due

        async def taken() -> bool:
            return 2 in started

        await eventually(taken, "the deferred wake-up came due and was taken")
        await asyncio.wait_for(runner.drained(), 5)
        assert ran[-1] == ("second", 2)
    finally:
        await runner.stop()


async def test_drained_waits_for_a_cron_pass_under_way() -> None:
    passes: list[str] = []
    gate = asyncio.Event()

    async def cron(ctx: Any) -> None:
        await gate.wait()
        passes.append("done")

    runner = await _runner({}, [Cron(cron, 3600)])
    try:
        await asyncio.sleep(0)  # the cron's first pass starts (and waits on the gate)
        drained = asyncio.create_task(runner.drained())
        for _ in range(10):  # let it run as far as it can: it must wait for the pass
            await asyncio.sleep(0)
        assert not drained.done()
        gate.set()
        await asyncio.wait_for(drained, 5)
        assert passes == ["done"]
    finally:
        await runner.stop()
