"""The batch feature's job table: the job entry points every runner runs (arq worker or
in-process runner), the cron schedule and the start-up hook, registered into the
runtime by the entry points (``job_table``). Jobs take ids only and are idempotent."""

from __future__ import annotations

from sqlalchemy import select

from app.batches import state
from app.batches.executor import execute
from app.batches.monitor import monitor
from app.batches.recovery import auto_retry, purge, recover, start_due
from app.batches.seeding import seed
from app.config import Settings
from app.db.unit_of_work import request_wakeup
from app.domain import FINAL
from app.models import Batch
from app.runtime.context import JobContext
from app.runtime.registry import Cron, Job, JobTable
from app.webhooks import outbox
from app.webhooks.service import deliver, deliver_due

JOBS: dict[str, Job] = {
    "seed": seed,
    "execute": execute,
    "monitor": monitor,
    outbox.JOB: deliver,  # a webhook delivery: its id rides in ``Wakeup.batch_id``
}

PURGE_INTERVAL_S = 3600.0


def job_table(settings: Settings) -> JobTable:
    """The jobs, and the crons: recovery, auto-retry and lost webhook deliveries run
    often; purge hourly."""
    crons = [
        Cron(start_due, settings.poll_time),
        Cron(recover, settings.recover_interval),
        Cron(auto_retry, settings.recover_interval),
        Cron(deliver_due, settings.recover_interval),
        Cron(purge, PURGE_INTERVAL_S),
    ]
    return JobTable(jobs=JOBS, crons=crons, on_start=resume_after_restart)


async def resume_after_restart(ctx: JobContext) -> None:
    """Wake every unfinished batch at once (``state.wakeups`` for the state it is in)
    instead of waiting for the recovery cron's timeouts: at the embedded default's
    start-up (this process is the only worker), and when a worker finds Redis again
    after an outage (a restart lost every queued wake-up)."""
    async with ctx.unit() as session:
        rows = (
            await session.execute(
                select(
                    Batch.id,
                    Batch.status,
                    Batch.priority,
                    Batch.seeding_done,
                    Batch.targets_resolved,
                ).where(Batch.status.not_in(state.statuses(FINAL)))
            )
        ).all()
        for row in rows:
            for wakeup in state.wakeups_for(ctx.settings, row):
                request_wakeup(session, wakeup)
    await deliver_due(ctx)  # webhook deliveries whose wake-up the restart lost
