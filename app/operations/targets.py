"""What an operation acts on: a target says which table its item ids point into, which
filter a batch may use to select them, and how a filter is counted and paged through
(in id order) while seeding. An operation names its target; the batch engine never
asks which one it is."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import ScalarSelect, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.engine.queries import instance_filter_clauses, task_filter_clauses
from app.models import InstanceArchive, MonitorGrant, ProcessInstance, Task, User
from app.schemas.batch import ArchiveFilter, InstanceFilter, TaskFilter
from app.schemas.common import validate_part


class Target(abc.ABC):
    name: ClassVar[str]
    """``task`` or ``instance``: also the word item errors use ("Task 7 …")."""
    Filter: ClassVar[type[BaseModel]]
    """The filter a batch of this target accepts (validated at creation)."""
    id_column: ClassVar[Any]

    def parse_filter(self, raw: dict[str, Any]) -> dict[str, Any]:
        model = validate_part(self.Filter, raw, part="filter", what="Invalid filter")
        return model.model_dump(mode="json", exclude_none=True)

    @abc.abstractmethod
    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        """``SELECT <item id>`` of everything the filter matches for this creator."""

    @abc.abstractmethod
    def title_of(self, item_id: Any) -> ScalarSelect[Any]:
        """The item's title (its process's) for the column ``item_id`` — a correlated
        scalar subquery, for the results export."""

    async def count(
        self, session: AsyncSession, creator: User, flt: dict[str, Any]
    ) -> tuple[int, int]:
        """(how many items match, the highest matching id) — one indexed query."""
        sub = self.matching(creator, flt).subquery()
        row = (await session.execute(select(func.count(), func.max(sub.c.id)))).one()
        return int(row[0]), int(row[1] or 0)

    def page_after(
        self, creator: User, flt: dict[str, Any], *, after: int, until: int, limit: int
    ) -> Select[Any]:
        """``SELECT`` the next page of matching ids in (after, until], ascending."""
        col = type(self).id_column  # via the class: an ORM attribute is a descriptor
        return (
            self.matching(creator, flt).where(col > after, col <= until).order_by(col).limit(limit)
        )


class Tasks(Target):
    """A task filter selects the creator's own pending tasks."""

    name = "task"
    Filter = TaskFilter
    id_column = Task.id

    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        clauses = task_filter_clauses(creator, status="pending", assignee_id=creator.id, **flt)
        return (
            select(Task.id)
            .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
            .where(*clauses)
        )

    def title_of(self, item_id: Any) -> ScalarSelect[Any]:
        return (
            select(ProcessInstance.title)
            .join(Task, Task.instance_id == ProcessInstance.id)
            .where(Task.id == item_id)
            .scalar_subquery()
        )


class Instances(Target):
    """An instance filter selects the instances the creator can see; whether they may
    operate on each is checked per item at execution."""

    name = "instance"
    Filter = InstanceFilter
    id_column = ProcessInstance.id

    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        return select(ProcessInstance.id).where(*instance_filter_clauses(creator, **flt))

    def title_of(self, item_id: Any) -> ScalarSelect[Any]:
        return select(ProcessInstance.title).where(ProcessInstance.id == item_id).scalar_subquery()


TASKS = Tasks()
INSTANCES = Instances()


class Archives(Target):
    """Deleted instances, by the id that keys their snapshots: admins see every archive,
    others those of definitions they hold a monitor grant for (the instance itself is
    gone, so grants are the only visibility left). Each id appears once however many
    snapshots it has."""

    name = "instance"
    Filter = ArchiveFilter
    id_column = InstanceArchive.instance_id

    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        stmt = select(InstanceArchive.instance_id.label("id")).distinct()
        if flt.get("definition_key"):
            stmt = stmt.where(InstanceArchive.definition_key == flt["definition_key"])
        if not creator.is_admin:
            stmt = stmt.where(
                InstanceArchive.definition_key.in_(
                    select(MonitorGrant.definition_key).where(MonitorGrant.user_id == creator.id)
                )
            )
        return stmt

    def title_of(self, item_id: Any) -> ScalarSelect[Any]:
        """From the newest snapshot (the instance itself is gone)."""
        return (
            select(InstanceArchive.snapshot["instance"]["title"].as_string())
            .where(InstanceArchive.instance_id == item_id)
            .order_by(InstanceArchive.id.desc())
            .limit(1)
            .scalar_subquery()
        )


ARCHIVES = Archives()
