"""Resolving a batch's targets: an id list, or a filter counted up front and then paged
through in id order while seeding."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.engine.queries import instance_filter_clauses, task_filter_clauses
from app.models import ProcessInstance, Task, User
from app.schemas.batch import InstanceFilter, TaskFilter
from app.schemas.common import validate_part

FILTERS: dict[str, type[BaseModel]] = {"task": TaskFilter, "instance": InstanceFilter}


def parse_filter(target: str, raw: dict[str, Any]) -> dict[str, Any]:
    model = validate_part(FILTERS[target], raw, part="filter", what="Invalid filter")
    return model.model_dump(mode="json", exclude_none=True)


def _id_column(target: str) -> Any:
    return Task.id if target == "task" else ProcessInstance.id


def _matching(target: str, creator: User, flt: dict[str, Any]) -> Select[Any]:
    """``SELECT <item id>`` of everything the filter matches for this creator.

    A ``task.approve`` filter selects the creator's own pending tasks; an instance filter
    selects instances the creator can see (per-item permission is checked at execution).
    """
    if target == "task":
        clauses = task_filter_clauses(creator, status="pending", assignee_id=creator.id, **flt)
        return (
            select(Task.id)
            .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
            .where(*clauses)
        )
    return select(ProcessInstance.id).where(*instance_filter_clauses(creator, **flt))


async def count_matching(
    session: AsyncSession, target: str, creator: User, flt: dict[str, Any]
) -> tuple[int, int]:
    """(how many items match, the highest matching id) — one indexed query."""
    sub = _matching(target, creator, flt).subquery()
    row = (await session.execute(select(func.count(), func.max(sub.c.id)))).one()
    return int(row[0]), int(row[1] or 0)


def page_after(
    target: str,
    creator: User,
    flt: dict[str, Any],
    *,
    after: int,
    until: int,
    limit: int,
) -> Select[Any]:
    """``SELECT`` the next page of matching ids in (after, until], ascending."""
    col = _id_column(target)
    return (
        _matching(target, creator, flt).where(col > after, col <= until).order_by(col).limit(limit)
    )
