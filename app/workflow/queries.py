"""Task and instance listing, filters and visibility.

The filter → WHERE translation lives here as plain functions returning SQLAlchemy
clauses, so the HTTP lists and filter batches select exactly the same rows.

Visibility:
- a task is visible to its assignee; an admin sees every task;
- an instance is visible to its initiator, to anyone who holds (or held) a task in it,
  and to holders of a monitor grant for its definition key; an admin sees all.
Anything invisible is reported as missing (404), never as forbidden, so ids do not
leak the existence of other people's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.pages import total_of
from app.errors import NotFound
from app.models import MonitorGrant, ProcessInstance, Task, User

TASK_INSTANCE_JOIN = Task.instance_id == ProcessInstance.id
"""The join every ``task_filter_clauses`` statement needs (the clauses name both tables)."""


def keyword_clause(keyword: str) -> ColumnElement[bool]:
    """Case-insensitive substring match on an instance's title or business key."""
    return or_(
        ProcessInstance.title.icontains(keyword, autoescape=True),
        ProcessInstance.business_key.icontains(keyword, autoescape=True),
    )


def instance_visibility_clause(user: User) -> ColumnElement[bool]:
    """Initiator, any task holder (past or present), or a monitor grant on the key."""
    return or_(
        ProcessInstance.initiator_id == user.id,
        select(Task.id)
        .where(Task.instance_id == ProcessInstance.id, Task.assignee_id == user.id)
        .exists(),
        ProcessInstance.definition_key.in_(
            select(MonitorGrant.definition_key).where(MonitorGrant.user_id == user.id)
        ),
    )


def as_aware(value: datetime | str) -> datetime:
    """A filter bound as a datetime: batch filters are stored as JSON, so their
    ``started_*`` bounds come back as ISO strings. Both were validated on the way in
    (an offset is required); a naive value here is a programming error."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return moment.astimezone(UTC)


def instance_filter_clauses(
    user: User | None,
    *,
    status: str | None = None,
    definition_key: str | None = None,
    keyword: str | None = None,
    department_id: int | None = None,
    business_key: str | None = None,
    started_after: datetime | str | None = None,
    started_before: datetime | str | None = None,
    ids: Sequence[int] | None = None,
) -> list[ColumnElement[bool]]:
    """WHERE clauses on ``process_instances`` for the instance list / an instance filter.

    ``user`` applies the visibility rule (admins see all); ``None`` means no visibility
    restriction (system callers that check permissions per item). ``ids=[]`` matches
    nothing; ``None`` or blank values do not filter. ``business_key`` is an exact match;
    ``started_after`` (inclusive) and ``started_before`` (exclusive) bound
    ``created_at``, so consecutive windows never count an instance twice; they accept a
    timezone-aware datetime or its ISO 8601 string (a stored batch filter).
    """
    clauses: list[ColumnElement[bool]] = []
    if user is not None and not user.is_admin:
        clauses.append(instance_visibility_clause(user))
    if status:
        clauses.append(ProcessInstance.status == status)
    if definition_key:
        clauses.append(ProcessInstance.definition_key == definition_key)
    if keyword and keyword.strip():
        clauses.append(keyword_clause(keyword.strip()))
    if department_id is not None:
        clauses.append(ProcessInstance.department_id == department_id)
    if business_key:
        clauses.append(ProcessInstance.business_key == business_key)
    if started_after is not None:
        clauses.append(ProcessInstance.created_at >= as_aware(started_after))
    if started_before is not None:
        clauses.append(ProcessInstance.created_at < as_aware(started_before))
    if ids is not None:
        clauses.append(ProcessInstance.id.in_(list(ids)) if ids else false())
    return clauses


def task_filter_clauses(
    user: User | None,
    *,
    status: str | None = None,
    node_id: str | None = None,
    definition_key: str | None = None,
    keyword: str | None = None,
    department_id: int | None = None,
    assignee_id: int | None = None,
    ids: Sequence[int] | None = None,
) -> list[ColumnElement[bool]]:
    """WHERE clauses for the task list / a task filter batch.

    The clauses name ``tasks`` and ``process_instances``: select from ``Task`` joined
    with ``ProcessInstance`` on ``TASK_INSTANCE_JOIN``. A non-admin ``user`` only ever
    matches their own tasks, so ``assignee_id`` of somebody else gives an empty result
    (not a 403): filters narrow, they never widen. ``user=None`` applies no visibility
    rule (pass ``assignee_id`` to pick one person's tasks, as a ``task.approve`` filter
    batch does with its creator).
    """
    clauses: list[ColumnElement[bool]] = []
    if user is not None and not user.is_admin:
        clauses.append(Task.assignee_id == user.id)
    if status:
        clauses.append(Task.status == status)
    if node_id:
        clauses.append(Task.node_id == node_id)
    if assignee_id is not None:
        clauses.append(Task.assignee_id == assignee_id)
    if ids is not None:
        clauses.append(Task.id.in_(list(ids)) if ids else false())
    if definition_key:
        clauses.append(ProcessInstance.definition_key == definition_key)
    if keyword and keyword.strip():
        clauses.append(keyword_clause(keyword.strip()))
    if department_id is not None:
        clauses.append(ProcessInstance.department_id == department_id)
    return clauses


@dataclass(frozen=True)
class TaskRow:
    """A task plus the instance columns a task list shows."""

    task: Task
    title: str
    business_key: str | None
    definition_key: str
    department_id: int | None
    instance_status: str

    @classmethod
    def from_row(cls, row: Any) -> TaskRow:
        task, title, business_key, definition_key, department_id, status = row
        return cls(task, title, business_key, definition_key, department_id, status)


def _task_rows_query() -> Select:
    return select(
        Task,
        ProcessInstance.title,
        ProcessInstance.business_key,
        ProcessInstance.definition_key,
        ProcessInstance.department_id,
        ProcessInstance.status,
    ).join(ProcessInstance, TASK_INSTANCE_JOIN)


async def list_tasks(
    session: AsyncSession,
    clauses: Sequence[ColumnElement[bool]],
    *,
    offset: int,
    limit: int,
) -> tuple[list[TaskRow], int]:
    """One page of tasks (newest first, one joined query) and the total count."""
    total = await total_of(
        session, select(Task.id).join(ProcessInstance, TASK_INSTANCE_JOIN).where(*clauses)
    )
    result = await session.execute(
        _task_rows_query().where(*clauses).order_by(Task.id.desc()).offset(offset).limit(limit)
    )
    return [TaskRow.from_row(row) for row in result.all()], total


async def get_task_row(session: AsyncSession, user: User, task_id: int) -> TaskRow:
    """One visible task with its instance columns; 404 when missing or not visible."""
    clauses = [Task.id == task_id, *task_filter_clauses(user)]
    row = (await session.execute(_task_rows_query().where(*clauses))).first()
    if row is None:
        raise NotFound(f"Task {task_id} does not exist.")
    return TaskRow.from_row(row)


async def list_instances(
    session: AsyncSession,
    clauses: Sequence[ColumnElement[bool]],
    *,
    offset: int,
    limit: int,
) -> tuple[list[ProcessInstance], int]:
    """One page of instances (newest first) and the total count."""
    stmt = select(ProcessInstance).where(*clauses)
    rows = await session.scalars(
        stmt.order_by(ProcessInstance.id.desc()).offset(offset).limit(limit)
    )
    return list(rows), await total_of(session, stmt)


async def get_visible_instance(
    session: AsyncSession, user: User, instance_id: int
) -> ProcessInstance:
    """The instance if ``user`` may see it; 404 otherwise."""
    instance = await session.scalar(
        select(ProcessInstance).where(
            ProcessInstance.id == instance_id, *instance_filter_clauses(user)
        )
    )
    if instance is None:
        raise NotFound(f"Instance {instance_id} does not exist.")
    return instance
