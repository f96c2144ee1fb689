"""Instance state transitions: ``instance.suspend``, ``instance.resume``,
``instance.terminate`` (reason) and ``instance.complete`` (force-complete).

Each is one declaration: the states it leaves (``sources``), the state it reaches, and
whether pending tasks are cancelled on the way (terminate, complete: their batch locks
are released too, so an approve batch that reaches such a task later records it
``ignored``). On PostgreSQL the move is one statement — ``UPDATE … WHERE id = ANY(…)
AND status = ANY(:sources) [AND definition_key = ANY(:granted)] RETURNING id``, with the
task cancellation and the process-log INSERT in the same CTE — fused by the executor
with its claim and the detail results (``bulk_sql``); only the items that did not move
are loaded to say why. On SQLite (and for those stragglers) the shared path of
``InstanceOperation`` decides in Python and writes with two or three bulk statements.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in
from app.domain import BatchRun, Outcome
from app.models import ProcessInstance, Task
from app.operations.instance_base import (
    SUCCESS,
    InstanceOperation,
    PgUpdate,
    failed,
    ignored,
)
from app.operations.registry import register
from app.schemas.common import StrictModel

_MOVE = """
    UPDATE process_instances
    SET status = CAST(:to_state AS VARCHAR), updated_at = CAST(:now AS TIMESTAMPTZ){node}
    WHERE id = ANY({{targets}}) AND status = ANY(CAST(:sources AS VARCHAR[]))
    {{permission}}
    RETURNING id"""

_CANCEL_TASKS = """, cancelled AS (
    UPDATE tasks
    SET status = 'cancelled', locked_by_batch_id = NULL, completed_at = CAST(:now AS TIMESTAMPTZ)
    WHERE instance_id = ANY(ARRAY(SELECT id FROM applied)) AND status = 'pending'
)"""


class ReasonParams(StrictModel):
    reason: str | None = Field(default=None, max_length=2000)
    """Written into each process log row."""


class InstanceTransition(InstanceOperation):
    """Move instances from one of ``sources`` to ``to_state``; already there → ignored."""

    sources: ClassVar[tuple[str, ...]]
    to_state: ClassVar[str]
    cancels_tasks: ClassVar[bool] = False
    ends_process: ClassVar[bool] = False
    """The process leaves every step: ``current_node_id`` becomes empty."""

    def decide(self, run: BatchRun, row: Any, prepared: Any) -> Outcome:
        if row.status == self.to_state:
            return ignored(f"Process {row.id} is already {self.to_state}.")
        if row.status not in self.sources:
            return failed(
                f"Process {row.id} is {row.status}; only "
                f"{' or '.join(self.sources)} processes can be {self.to_state}."
            )
        return SUCCESS

    async def write(
        self, session: AsyncSession, run: BatchRun, rows: list[Any], prepared: Any
    ) -> None:
        """Rows already loaded and locked (SQLite, or PostgreSQL stragglers)."""
        ids = [r.id for r in rows]
        now = utcnow()
        await session.execute(
            update(ProcessInstance)
            .where(id_in(session, ProcessInstance.id, ids))
            .values(
                status=self.to_state,
                updated_at=now,
                **({"current_node_id": None} if self.ends_process else {}),
            ),
            execution_options={"synchronize_session": False},
        )
        if self.cancels_tasks:
            await session.execute(
                update(Task)
                .where(id_in(session, Task.instance_id, ids), Task.status == "pending")
                .values(status="cancelled", locked_by_batch_id=None, completed_at=now),
                execution_options={"synchronize_session": False},
            )
        await self.log(session, run, ids, run.params.get("reason"))

    def pg_update(self, run: BatchRun) -> PgUpdate:
        node = ", current_node_id = NULL" if self.ends_process else ""
        return PgUpdate(
            update=_MOVE.format(node=node),
            params={"sources": list(self.sources), "to_state": self.to_state},
            message=run.params.get("reason"),
            extra=_CANCEL_TASKS if self.cancels_tasks else "",
        )


class SuspendInstances(InstanceTransition):
    type = "instance.suspend"
    sources = ("active",)
    to_state = "suspended"
    verb = "suspend"


class ResumeInstances(InstanceTransition):
    type = "instance.resume"
    sources = ("suspended",)
    to_state = "active"
    verb = "resume"


class TerminateInstances(InstanceTransition):
    type = "instance.terminate"
    Params = ReasonParams
    sources = ("active", "suspended")
    to_state = "terminated"
    verb = "terminate"
    cancels_tasks = True


class CompleteInstances(InstanceTransition):
    """Force-complete: the process ends as completed whatever step it was at."""

    type = "instance.complete"
    sources = ("active", "suspended")
    to_state = "completed"
    verb = "complete"
    cancels_tasks = True
    ends_process = True


for _op in (SuspendInstances, ResumeInstances, TerminateInstances, CompleteInstances):
    register(_op())
