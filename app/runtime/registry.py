"""The job table: what the layer above (the batch feature) registers into the runtime,
so that the runtime runs jobs without importing any feature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from app.runtime.context import JobContext

Job = Callable[[JobContext, int], Awaitable[None]]
"""A job: takes a batch id only, and is idempotent (a wake-up may come twice)."""
CronPass = Callable[[JobContext], Awaitable[None]]


async def _nothing(_ctx: JobContext) -> None:
    pass


@dataclass(frozen=True)
class Cron:
    run: CronPass
    every_s: float
    """Seconds between two passes."""

    @property
    def name(self) -> str:
        return getattr(self.run, "__name__", "cron")


@dataclass(frozen=True)
class JobTable:
    jobs: Mapping[str, Job]
    """Job name (``Wakeup.job``) → function."""
    crons: Sequence[Cron] = ()
    on_start: CronPass = _nothing
    """Wakes the work a restart lost: when the embedded runner starts (it is the only
    worker), and when an arq worker finds Redis again after an outage."""
