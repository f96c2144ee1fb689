"""``task.approve``: approve or reject tasks with the engine's own approval rules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import BatchRun, Outcome, WorkItem
from app.operations.item_locks import TASK_LOCK
from app.operations.registry import Operation, register
from app.operations.targets import TASKS
from app.schemas.common import FormBag, Id, StrictModel
from app.workflow.approval import ApprovalInput, approve_at_seed, approve_tasks


class ApproveParams(StrictModel):
    decision: Literal["approve", "reject"] = "approve"
    comment: str | None = Field(default=None, max_length=2000)
    form_data: FormBag = Field(default_factory=dict)
    next_assignee_id: Id | None = None


class ApproveTasks(Operation):
    type = "task.approve"
    target = TASKS
    Params = ApproveParams
    lock = TASK_LOCK
    supports_dry_run = True

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        return await approve_tasks(
            session,
            run.creator_id,
            [self._input(run.params, item) for item in items],
            batch_id=None if run.dry_run else run.batch_id,
            dry_run=run.dry_run,
        )

    async def apply_at_seed(
        self, session: AsyncSession, run: BatchRun, page: Select[Any]
    ) -> tuple[list[int], set[int]]:
        """A filter batch's seed page (no per-row payloads): approve what certainly
        passes with the shared params (``approve_at_seed``, which reads the page with
        each task's step and state: no query of its own for those); the rest is locked
        and left pending for ``apply``."""
        return await approve_at_seed(session, run.creator_id, run.batch_id, run.params, page)

    @staticmethod
    def _input(params: dict[str, Any], item: WorkItem) -> ApprovalInput:
        """Batch params, overridden field by field by the row's own payload (Excel)."""
        row = item.payload or {}
        form_data = {**params.get("form_data", {}), **row.get("form_data", {})}
        return ApprovalInput(
            task_id=item.item_id,
            decision=row.get("decision") or params.get("decision", "approve"),
            comment=row.get("comment", params.get("comment")),
            form_data=form_data,
            next_assignee_id=row.get("next_assignee_id", params.get("next_assignee_id")),
        )


register(ApproveTasks())
