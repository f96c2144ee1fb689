"""What an operation acts on: a target says which table its item ids point into, which
filter a batch may use to select them, and how a filter is counted and paged through
(in id order) while seeding. An operation names its target; the batch engine never
asks which one it is."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import ScalarSelect, Select, false, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.pages import estimated_rows
from app.models import InstanceArchive, ProcessInstance, Task, User
from app.schemas.batch import ArchiveFilter, InstanceFilter, TaskFilter
from app.schemas.common import validate_part
from app.schemas.filters import ARCHIVE_FILTERS, TASK_FILTERS
from app.workflow.queries import (
    filter_clauses,
    instance_filter_clauses,
    instance_visibility_clause,
    task_filter_clauses,
)

ESTIMATE_FROM = 200_000
"""From this many rows on (the planner's estimate), a create request takes PostgreSQL's
estimate as the filter's provisional ``total`` instead of counting: counting a million
tasks joined with their processes took ~1 s of the POST. The seed job counts exactly
before its first page (enforcing ``BATCH_MAX_ITEMS``), and ``total`` is the number of
details once seeding ends."""


ESTIMATE_SLACK = 1.1
"""An estimate up to 10 % over ``BATCH_MAX_ITEMS`` is not counted at creation (estimates
wobble; a million-item batch at the default limit of a million would otherwise be
counted in the POST): the seed job's exact count enforces the limit."""


@dataclass(frozen=True)
class Counted:
    """What a create request learns about a filter: how many items (exact, or the
    planner's estimate), the highest id to seed up to, and whether ``total`` is exact."""

    total: int
    seed_until: int
    exact: bool = True


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
    def title_of(self, item_id: Any, creator: User) -> ScalarSelect[Any]:
        """The item's title (its process's) for the column ``item_id`` — a correlated
        scalar subquery, for the results export — and NULL for an item ``creator`` may
        not see: an export never shows more than the item errors do."""

    async def count(
        self, session: AsyncSession, creator: User, flt: dict[str, Any]
    ) -> tuple[int, int]:
        """(how many items match, the highest matching id) — one indexed query."""
        sub = self.matching(creator, flt).subquery()
        row = (await session.execute(select(func.count(), func.max(sub.c.id)))).one()
        return int(row[0]), int(row[1] or 0)

    def superset(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        """``SELECT <item id>`` of at least everything ``matching`` selects, cheaper to
        count (no join): what proves a filter under ``BATCH_MAX_ITEMS`` without counting
        it (``at_most``). By default the matching rows themselves."""
        return self.matching(creator, flt)

    async def at_most(
        self, session: AsyncSession, creator: User, flt: dict[str, Any], limit: int
    ) -> bool:
        """Whether the filter provably matches at most ``limit`` items, cheapest proof
        first: the span of its ``superset``'s ids (ids are unique, so no more rows than
        ``max - min + 1``: two index probes), else the superset counted up to ``limit +
        1``. False means "maybe more" — count the filter itself to know."""
        superset = self.superset(creator, flt)
        rows = superset.subquery()
        low, high = (await session.execute(select(func.min(rows.c.id), func.max(rows.c.id)))).one()
        if low is None or high - low + 1 <= limit:
            return True
        bounded = superset.limit(limit + 1).subquery()
        return int(await session.scalar(select(func.count()).select_from(bounded)) or 0) <= limit

    async def count_for_create(
        self, session: AsyncSession, creator: User, flt: dict[str, Any], *, max_items: int
    ) -> Counted:
        """``count`` for a create request, quick at any size: below ``ESTIMATE_FROM``
        estimated rows (and on SQLite) the exact count; above it, PostgreSQL's estimate
        and the table's highest id (nothing newer can match; rows are seeded in id
        order) — unless the estimate exceeds ``max_items`` by more than
        ``ESTIMATE_SLACK``, when the matching rows are counted up to ``max_items + 1``
        (a request that large is refused here). Either way the seed job counts exactly
        before its first page and refuses a batch over the limit."""
        if session.get_bind().dialect.name == "postgresql":
            matching = self.matching(creator, flt)
            estimate = await estimated_rows(session, matching)
            if estimate >= ESTIMATE_FROM:
                if estimate > max_items * ESTIMATE_SLACK:
                    bounded = matching.limit(max_items + 1).subquery()
                    n = int(await session.scalar(select(func.count()).select_from(bounded)) or 0)
                    if n > max_items:  # refused: "more than max_items"
                        return Counted(n, 0, exact=False)
                col = type(self).id_column
                top = await session.scalar(select(func.max(col)))
                return Counted(estimate, int(top or 0), exact=False)
        total, seed_until = await self.count(session, creator, flt)
        return Counted(total, seed_until)

    def page_after(
        self, creator: User, flt: dict[str, Any], *, after: int, until: int, limit: int
    ) -> Select[Any]:
        """``SELECT`` the next page of matching ids in (after, until], ascending."""
        return self._after(self.matching(creator, flt), after=after, until=until, limit=limit)

    def claim_after(
        self, creator: User, flt: dict[str, Any], *, after: int, until: int, limit: int
    ) -> Select[Any]:
        """``SELECT`` the next ``limit`` ids of the ``superset`` in (after, until]: the
        range a seed page claims. It holds at most ``limit`` matching items, and is
        found without the join (5 000 tasks joined with their processes took ~30 ms of
        every page's claim; their index range alone, ~2 ms)."""
        return self._after(self.superset(creator, flt), after=after, until=until, limit=limit)

    def _after(self, ids: Select[Any], *, after: int, until: int, limit: int) -> Select[Any]:
        col = type(self).id_column  # via the class: an ORM attribute is a descriptor
        return ids.where(col > after, col <= until).order_by(col).limit(limit)


_TASK_ONLY_FIELDS = frozenset(
    f.name
    for f in TASK_FILTERS.fields
    if all(getattr(c, "table", None) is Task.__table__ for c in f.columns)
)
"""Task filter fields matched on ``tasks`` columns alone (a superset needs no join)."""


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

    def superset(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        """The creator's pending tasks narrowed by the filter's ``tasks`` columns only
        (the node): one index range, no process joined."""
        own = {k: v for k, v in flt.items() if k in _TASK_ONLY_FIELDS}
        clauses = task_filter_clauses(creator, status="pending", assignee_id=creator.id, **own)
        return select(Task.id).where(*clauses)

    def title_of(self, item_id: Any, creator: User) -> ScalarSelect[Any]:
        query = (
            select(ProcessInstance.title)
            .join(Task, Task.instance_id == ProcessInstance.id)
            .where(Task.id == item_id)
        )
        if not creator.is_admin:
            query = query.where(Task.assignee_id == creator.id)
        return query.scalar_subquery()


class Instances(Target):
    """An instance filter selects the instances the creator can see; whether they may
    operate on each is checked per item at execution."""

    name = "instance"
    Filter = InstanceFilter
    id_column = ProcessInstance.id

    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        return select(ProcessInstance.id).where(*instance_filter_clauses(creator, **flt))

    def title_of(self, item_id: Any, creator: User) -> ScalarSelect[Any]:
        query = select(ProcessInstance.title).where(ProcessInstance.id == item_id)
        if not creator.is_admin:
            query = query.where(instance_visibility_clause(creator))
        return query.scalar_subquery()


TASKS = Tasks()
INSTANCES = Instances()


class Archives(Target):
    """Deleted instances, by the id that keys their snapshots: only admins see archives
    (a non-admin's filter selects nothing). Each id appears once however many snapshots
    it has."""

    name = "instance"
    Filter = ArchiveFilter
    id_column = InstanceArchive.instance_id

    def matching(self, creator: User, flt: dict[str, Any]) -> Select[Any]:
        stmt = (
            select(InstanceArchive.instance_id.label("id"))
            .distinct()
            .where(*filter_clauses(ARCHIVE_FILTERS, flt))
        )
        return stmt if creator.is_admin else stmt.where(false())

    def title_of(self, item_id: Any, creator: User) -> ScalarSelect[Any]:
        """From the newest snapshot (the instance itself is gone)."""
        query = select(InstanceArchive.snapshot["instance"]["title"].as_string()).where(
            InstanceArchive.instance_id == item_id
        )
        if not creator.is_admin:
            query = query.where(false())
        return query.order_by(InstanceArchive.id.desc()).limit(1).scalar_subquery()


ARCHIVES = Archives()
