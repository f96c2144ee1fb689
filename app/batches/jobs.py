"""The job entry points every backend runs (arq worker or in-process runner), and the
cron schedule. Jobs take ids only and are idempotent."""

from __future__ import annotations

from sqlalchemy import and_, or_, select

from app.batches.executor import execute
from app.batches.monitor import monitor
from app.batches.recovery import auto_retry, purge, recover, wake
from app.batches.seeding import seed
from app.config import Settings
from app.models import Batch
from app.queue.context import JobContext
from app.queue.inprocess import Cron, Job

JOBS: dict[str, Job] = {"seed": seed, "execute": execute, "monitor": monitor}

PURGE_INTERVAL_S = 3600.0


def cron_schedule(settings: Settings) -> list[tuple[Cron, float]]:
    """(cron, seconds between passes). Recovery and auto-retry run often; purge hourly."""
    return [
        (recover, settings.recover_interval),
        (auto_retry, settings.recover_interval),
        (purge, PURGE_INTERVAL_S),
    ]


async def resume_after_restart(ctx: JobContext) -> None:
    """Embedded default start-up: this process is the only worker, so wake every
    unfinished batch at once instead of waiting for the recovery cron's timeouts."""
    async with ctx.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Batch.id, Batch.priority, Batch.seeding_done).where(
                    or_(
                        Batch.status.in_(("created", "seeding", "running")),
                        and_(Batch.status == "suspended", Batch.seeding_done.is_(False)),
                    )
                )
            )
        ).all()
    for batch_id, priority, seeding_done in rows:
        await wake(ctx, batch_id, priority, seeding_done)
