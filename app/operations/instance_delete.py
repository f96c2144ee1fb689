"""``instance.delete`` (reason) and ``instance.archive_delete``: remove instances for
good, keeping a full snapshot, and later purge those snapshots.

``instance.delete`` goes through the shared gate of ``InstanceOperation`` (any status
may be deleted), then per chunk: one query each for the tasks and the process logs of
the decided instances, one INSERT of every snapshot into ``instance_archives``, and one
DELETE per table (process_logs, tasks, process_instances). The instance's own process
logs are deleted with it, so unlike the other instance operations it writes no process
log: the deletion is recorded by the archive row itself — ``deleted_by`` (the batch
creator), ``batch_id`` and the ``reason`` inside the snapshot. A task locked by another
batch (an approve batch waiting to run) goes with its instance; that batch then finds
"Task N does not exist." like any missing task.

``instance.archive_delete`` acts on instances that no longer exist, so it does not use
the instance gate: its items are the ids keying the snapshots (target ``ARCHIVES``). Per
chunk: one query for the archives of the chunk's ids and one DELETE. Only admins may
run it (reading archives is an admin's right too); an id without an archive fails with
"has no archive".
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, ClassVar, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in, insert_rows
from app.domain import BatchRun, ErrorCode, Outcome, WorkItem
from app.models import InstanceArchive, ProcessInstance, ProcessLog, Task
from app.operations.instance_base import BASE_COLUMNS, SUCCESS, InstanceOperation, failed, ignored
from app.operations.instances import ReasonParams
from app.operations.registry import Operation, register
from app.operations.targets import ARCHIVES
from app.workflow.permissions import load_operator

_INSTANCES = cast(Table, ProcessInstance.__table__)
_TASKS = cast(Table, Task.__table__)
_LOGS = cast(Table, ProcessLog.__table__)
_ARCHIVES = cast(Table, InstanceArchive.__table__)


def _jsonable(value: Any) -> Any:
    """Column values as the snapshot stores them: datetimes as ISO 8601 text."""
    return value.isoformat() if isinstance(value, datetime) else value


def _record(row: Any, table: Table) -> dict[str, Any]:
    """Every column of ``table`` from a loaded row, JSON-ready."""
    mapping = row._mapping
    return {c.name: _jsonable(mapping[c.name]) for c in table.columns}


class DeleteInstances(InstanceOperation):
    type = "instance.delete"
    Params = ReasonParams
    verb = "delete"
    columns: ClassVar[tuple[Any, ...]] = tuple(
        c for c in _INSTANCES.columns if c.name not in {col.key for col in BASE_COLUMNS}
    )
    """Every column, so the snapshot needs no second read of the instances."""

    def decide(self, run: BatchRun, row: Any, prepared: Any) -> Outcome:
        """Any status may be deleted; a deleted one is gone, so the gate fails it."""
        return SUCCESS

    async def write(
        self, session: AsyncSession, run: BatchRun, rows: list[Any], prepared: Any
    ) -> None:
        """Snapshot then delete, with two reads and four writes for the whole chunk."""
        ids = [r.id for r in rows]
        tasks: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for task in await session.execute(
            select(_TASKS).where(id_in(session, _TASKS.c.instance_id, ids)).order_by(_TASKS.c.id)
        ):
            tasks[task.instance_id].append(_record(task, _TASKS))
        logs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for log in await session.execute(
            select(_LOGS).where(id_in(session, _LOGS.c.instance_id, ids)).order_by(_LOGS.c.id)
        ):
            logs[log.instance_id].append(_record(log, _LOGS))
        reason = run.params.get("reason")
        await insert_rows(
            session,
            _ARCHIVES,
            [
                {
                    "instance_id": row.id,
                    "definition_key": row.definition_key,
                    "snapshot": {
                        "instance": _record(row, _INSTANCES),
                        "tasks": tasks[row.id],
                        "logs": logs[row.id],
                        "reason": reason,
                    },
                }
                for row in rows
            ],
            constants={
                "deleted_by": run.creator_id,
                "batch_id": run.batch_id,
                "created_at": utcnow(),
            },
        )
        # Children first: SQLite does not enforce the ON DELETE CASCADE.
        for table in (_LOGS, _TASKS):
            await session.execute(
                delete(table).where(id_in(session, table.c.instance_id, ids)),
                execution_options={"synchronize_session": False},
            )
        await session.execute(
            delete(_INSTANCES).where(id_in(session, _INSTANCES.c.id, ids)),
            execution_options={"synchronize_session": False},
        )


class DeleteArchives(Operation):
    """Purge every snapshot of each deleted instance: an admin's act, as reading the
    archives is (a monitor grant lets a user delete instances, not their last copy)."""

    type = "instance.archive_delete"
    target = ARCHIVES
    admin_only = True
    supports_dry_run = True

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        operator = await load_operator(session, run.creator_id)
        ids = sorted({i.item_id for i in items})
        archived: set[int] = set()
        if operator is not None and operator.is_admin and ids:
            query = select(InstanceArchive.instance_id).where(
                id_in(session, InstanceArchive.instance_id, ids)
            )
            if not run.dry_run:  # a prediction locks nothing
                query = query.with_for_update()
            archived = set(await session.scalars(query))
        outcomes: list[Outcome] = []
        todo: list[int] = []
        seen: set[int] = set()
        for item in items:
            if item.item_id in seen:
                outcomes.append(ignored(f"Process {item.item_id} is listed twice."))
                continue
            seen.add(item.item_id)
            # Not archived, or the creator lost the admin role since the batch was made:
            # missing and forbidden read the same.
            if item.item_id not in archived:
                outcomes.append(
                    failed(f"Process {item.item_id} has no archive.", ErrorCode.NOT_FOUND)
                )
                continue
            todo.append(item.item_id)
            outcomes.append(SUCCESS)
        if todo and not run.dry_run:
            await session.execute(
                delete(InstanceArchive).where(id_in(session, InstanceArchive.instance_id, todo)),
                execution_options={"synchronize_session": False},
            )
        return outcomes


register(DeleteInstances())
register(DeleteArchives())
