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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.util import find_tables

from app.db.pages import OrderedEquals, Total, count_matches
from app.errors import NotFound
from app.models import MonitorGrant, ProcessInstance, Task, User
from app.schemas.filters import INSTANCE_FILTERS, TASK_FILTERS, FilterField, FilterSet, Match
from app.workflow.approval import definitions_for
from app.workflow.forms import field_mode

TASK_INSTANCE_JOIN = Task.instance_id == ProcessInstance.id
"""The join every ``task_filter_clauses`` statement needs (the clauses name both tables)."""


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


def _field_clause(field: FilterField, value: Any) -> ColumnElement[bool] | None:
    """The clause for one given value, or None when the value does not narrow."""
    if value is None or value == "":
        return None
    column = field.columns[0]
    match field.match:
        case Match.EQUALS:
            return column == value
        case Match.CONTAINS:
            text = value.strip()
            return (
                or_(*(c.icontains(text, autoescape=True) for c in field.columns)) if text else None
            )
        case Match.AT_OR_AFTER:
            return column >= as_aware(value)
        case Match.BEFORE:
            return column < as_aware(value)
        case Match.ONE_OF:
            return column.in_(list(value)) if value else false()


def filter_clauses(declared: FilterSet, values: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    """WHERE clauses for the given filter values, one per value that narrows (``None`` and
    blank text do not): the only translation of a filter to SQL, shared by the lists
    and filter batches. A name ``declared`` does not have is a programming error."""
    unknown = set(values) - set(declared.names)
    if unknown:
        raise TypeError(f"unknown filter field(s): {sorted(unknown)}")
    found = (
        _field_clause(field, values[field.name])
        for field in declared.fields
        if field.name in values
    )
    return [clause for clause in found if clause is not None]


def instance_filter_clauses(user: User | None, **values: Any) -> list[ColumnElement[bool]]:
    """WHERE clauses on ``process_instances`` for the instance list / an instance filter
    (``INSTANCE_FILTERS``).

    ``user`` applies the visibility rule (admins see all); ``None`` means no visibility
    restriction (system callers that check permissions per item). ``started_*`` accept a
    timezone-aware datetime or its ISO 8601 string (a stored batch filter).
    """
    visible = [] if user is None or user.is_admin else [instance_visibility_clause(user)]
    return [*visible, *filter_clauses(INSTANCE_FILTERS, values)]


def task_filter_clauses(user: User | None, **values: Any) -> list[ColumnElement[bool]]:
    """WHERE clauses for the task list / a task filter batch (``TASK_FILTERS``; ``ids``
    is a list of task ids here).

    The clauses name ``tasks`` and ``process_instances``: select from ``Task`` joined
    with ``ProcessInstance`` on ``TASK_INSTANCE_JOIN``. A non-admin ``user`` only ever
    matches their own tasks, so ``assignee_id`` of somebody else gives an empty result
    (not a 403): filters narrow, they never widen. ``user=None`` applies no visibility
    rule (pass ``assignee_id`` to pick one person's tasks, as a ``task.approve`` filter
    batch does with its creator).
    """
    return [*_own_tasks(user, ordered=False), *filter_clauses(TASK_FILTERS, values)]


def _own_tasks(user: User | None, *, ordered: bool) -> list[ColumnElement[bool]]:
    """The task visibility rule: a non-admin matches only their own tasks (``ordered``:
    written for a page ordered by (assignee, id) — ``OrderedEquals``)."""
    if user is None or user.is_admin:
        return []
    return [OrderedEquals(Task.assignee_id, user.id) if ordered else Task.assignee_id == user.id]


@dataclass(frozen=True)
class TaskList:
    """What the task list selects: the rule of ``task_filter_clauses``, the own-tasks
    clause written for a page ordered by (assignee, id)."""

    clauses: list[ColumnElement[bool]]
    one_assignee: bool
    """Every row is the same person's: the page follows the (assignee, id) index."""


def task_list(user: User, **values: Any) -> TaskList:
    """The caller's task list (``TASK_FILTERS``; ``ids`` a list of task ids). One
    person's list — a non-admin's own, or the one an admin names with ``assignee_id`` —
    is written for a page ordered by (assignee, id)."""
    own = _own_tasks(user, ordered=True)
    if not own and values.get("assignee_id") is not None:
        own = [OrderedEquals(Task.assignee_id, values["assignee_id"])]
        values = {**values, "assignee_id": None}
    return TaskList([*own, *filter_clauses(TASK_FILTERS, values)], one_assignee=bool(own))


@dataclass(frozen=True)
class TaskRow:
    """A task plus the instance columns a task list shows. ``form_data`` is the process's
    form as read; ``visible_values`` keeps only what the task's step shows."""

    task: Task
    title: str
    business_key: str | None
    definition_key: str
    department_id: int | None
    instance_status: str
    definition_id: int
    form_data: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> TaskRow:
        task, title, business_key, definition_key, department_id, status, def_id, form = row
        return cls(
            task, title, business_key, definition_key, department_id, status, def_id, form or {}
        )


def _task_rows_query() -> Select:
    return select(
        Task,
        ProcessInstance.title,
        ProcessInstance.business_key,
        ProcessInstance.definition_key,
        ProcessInstance.department_id,
        ProcessInstance.status,
        ProcessInstance.definition_id,
        ProcessInstance.form_data,
    ).join(ProcessInstance, TASK_INSTANCE_JOIN)


async def _keep_visible_values(session: AsyncSession, rows: list[TaskRow]) -> list[TaskRow]:
    """Each row's form values cut to the fields its task's step does not hide — what the
    approver may see there — with the definitions read once per page (the cached ones
    approval uses). A step that no longer exists shows nothing."""
    cache = definitions_for(session)
    await cache.load(session, {r.definition_id for r in rows})
    visible = []
    for r in rows:
        found = cache.node(r.definition_id, r.task.node_id)
        shown = (
            {k: v for k, v in r.form_data.items() if field_mode(found[1], k) != "hidden"}
            if found is not None
            else {}
        )
        visible.append(replace(r, form_data=shown))
    return visible


async def list_tasks(
    session: AsyncSession, tasks: TaskList, *, offset: int, limit: int
) -> tuple[list[TaskRow], Total]:
    """One page of tasks (newest first, one joined query) and how many match.

    The count joins the processes only when a clause names them (every task has
    exactly one): counting 10 001 of a user's tasks alone costs a third of the join."""
    names_instances = any(
        ProcessInstance.__table__ in find_tables(clause, check_columns=True)
        for clause in tasks.clauses
    )
    matching = select(Task.id).where(*tasks.clauses)
    if names_instances:
        matching = matching.join(ProcessInstance, TASK_INSTANCE_JOIN)
    total = await count_matches(session, matching)
    result = await session.execute(task_page(tasks, offset=offset, limit=limit))
    rows = [TaskRow.from_row(row) for row in result.all()]
    return await _keep_visible_values(session, rows), total


def task_page(tasks: TaskList, *, offset: int, limit: int) -> Select[Any]:
    """The page statement of ``list_tasks``: newest first — one person's rows by
    (assignee, id), so that index gives the order."""
    newest_first = [Task.id.desc()]
    if tasks.one_assignee:
        newest_first.insert(0, Task.assignee_id.desc())
    query = _task_rows_query().where(*tasks.clauses).order_by(*newest_first)
    return query.offset(offset).limit(limit)


async def get_task_row(session: AsyncSession, user: User, task_id: int) -> TaskRow:
    """One visible task with its instance columns; 404 when missing or not visible."""
    clauses = [Task.id == task_id, *task_filter_clauses(user)]
    row = (await session.execute(_task_rows_query().where(*clauses))).first()
    if row is None:
        raise NotFound(f"Task {task_id} does not exist.")
    [visible] = await _keep_visible_values(session, [TaskRow.from_row(row)])
    return visible


async def list_instances(
    session: AsyncSession,
    clauses: Sequence[ColumnElement[bool]],
    *,
    offset: int,
    limit: int,
) -> tuple[list[ProcessInstance], Total]:
    """One page of instances (newest first) and how many match."""
    stmt = select(ProcessInstance).where(*clauses)
    rows = await session.scalars(
        stmt.order_by(ProcessInstance.id.desc()).offset(offset).limit(limit)
    )
    return list(rows), await count_matches(session, select(ProcessInstance.id).where(*clauses))


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
