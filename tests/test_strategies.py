"""Issue 20: every strategy that applies items (``app.operations.pipeline``) leaves the
same rows. Each built-in type runs the same batch on two identical data sets — once
with the reference strategy (claim + ``apply``), once with the strategy under test
(or the automatic choice) — and the resulting tasks, instances, process logs,
archives, details (their error sentence, ``error_code`` and ``retryable`` included) and
batch counters must be equal, ids and timestamps aside."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import (
    BatchDetail,
    InstanceArchive,
    ProcessDefinition,
    ProcessInstance,
    ProcessLog,
    Task,
)
from app.operations import get_operation, pipeline
from app.operations.pipeline import Strategy
from tests.batch_helpers import create, get_batch, wait_for
from tests.conftest import ON_POSTGRES, Actor
from tests.factories import bulk_tasks, create_definition, expense_definition

DIALECT = "postgresql" if ON_POSTGRES else "sqlite"
OTHER_BATCH = 987_654
"""A batch that holds a lock on one task (its lock must survive every strategy)."""
MISSING = 999_999_999


@dataclass
class DataSet:
    """One copy of the starting data: a definition of its own (``key``), the instances
    of the creator's tasks in order, then one instance whose task is bob's."""

    key: str
    instances: list[int]
    tasks: list[int]
    batches: list[int] = field(default_factory=list)
    items_are_tasks: bool = False


@dataclass(frozen=True)
class Actors:
    admin: Actor
    alice: Actor
    bob: Actor


Body = Callable[[DataSet], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """A type's batch(es), who creates them, and what the data needs first."""

    bodies: tuple[Body, ...]
    creator: str = "admin"
    prepare: (
        Callable[[async_sessionmaker[AsyncSession], Actors, DataSet], Awaitable[None]] | None
    ) = None


def _filter(**params: Any) -> Body:
    return lambda data: {"filter": {"definition_key": data.key}, "params": params}


async def _second_version(
    sm: async_sessionmaker[AsyncSession], actors: Actors, data: DataSet
) -> None:
    await create_definition(
        actors.admin, expense_definition(actors.alice.id, actors.bob.id, key=data.key)
    )


async def _archive_three(
    sm: async_sessionmaker[AsyncSession], actors: Actors, data: DataSet
) -> None:
    """Archives to delete, made by the automatic strategy before any is forced."""
    batch = await create(actors.admin, {"type": "instance.delete", "ids": data.instances[:3]})
    await wait_for(actors.admin, batch["id"])


CASES: dict[str, Case] = {
    "task.approve": Case(
        (
            # Without form data only processes that already hold the required category
            # pass; a suspended process, a task another batch locks, an ended process.
            lambda data: {
                "filter": {"definition_key": data.key, "node_id": "manager"},
                "params": {"comment": "fine"},
            },
            # Already decided (by the batch above), someone else's, missing.
            lambda data: {
                "ids": [data.tasks[0], data.tasks[-1], MISSING],
                "params": {"form_data": {"category": "travel"}},
            },
        ),
        creator="alice",
    ),
    "instance.suspend": Case((_filter(),)),
    "instance.resume": Case((_filter(),)),
    "instance.terminate": Case((_filter(reason="strategy test"),)),
    "instance.complete": Case((_filter(),)),
    "instance.set_variables": Case((_filter(variables={"x": 1, "y": "z"}),)),
    "instance.migrate": Case(
        (lambda data: _filter(definition_key=data.key, target_version=2)(data),),
        prepare=_second_version,
    ),
    "instance.delete": Case((_filter(reason="GDPR"),)),
    "instance.archive_delete": Case(
        (lambda data: {"ids": [*data.instances[:4], MISSING]},), prepare=_archive_three
    ),
}

STRATEGIES: list[Strategy | None] = [
    Strategy.SEED_FUSED,
    Strategy.EXECUTE_FUSED,
    Strategy.ISOLATED,
    None,  # the automatic choice
]


async def _data_set(sm: async_sessionmaker[AsyncSession], actors: Actors, key: str) -> DataSet:
    """Twelve instances at the manager step (alice's tasks), one more with bob's task;
    some already hold the required category, two are suspended, one completed, one
    terminated, one task is locked by another batch, one instance has the variables."""
    definition = await create_definition(
        actors.admin, expense_definition(actors.alice.id, actors.bob.id, key=key)
    )
    common: dict[str, Any] = {
        "definition_id": definition["id"],
        "definition_key": key,
        "node_id": "manager",
        "initiator_id": actors.admin.id,
    }
    tasks = await bulk_tasks(sm, assignee_id=actors.alice.id, n=12, **common)
    tasks += await bulk_tasks(sm, assignee_id=actors.bob.id, n=1, title_prefix="Bob", **common)
    async with sm() as s:
        instances = list(
            await s.scalars(select(Task.instance_id).where(Task.id.in_(tasks)).order_by(Task.id))
        )
        for position in (0, 1, 2, 3, 6):
            await s.execute(
                update(ProcessInstance)
                .where(ProcessInstance.id == instances[position])
                .values(form_data={"amount": 5, "category": "meals"})
            )
        for position, status in (
            (4, "suspended"),
            (5, "suspended"),
            (6, "completed"),
            (7, "terminated"),
        ):
            await s.execute(
                update(ProcessInstance)
                .where(ProcessInstance.id == instances[position])
                .values(status=status)
            )
        await s.execute(
            update(Task).where(Task.id == tasks[8]).values(locked_by_batch_id=OTHER_BATCH)
        )
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == instances[9])
            .values(variables={"x": 1, "y": "z"})
        )
        await s.commit()
    return DataSet(key, instances, tasks)


async def _run(
    sm: async_sessionmaker[AsyncSession],
    actors: Actors,
    op_type: str,
    key: str,
    strategy: Strategy | None,
) -> dict[str, Any]:
    case = CASES[op_type]
    data = await _data_set(sm, actors, key)
    if case.prepare is not None:
        await case.prepare(sm, actors, data)
    creator: Actor = getattr(actors, case.creator)
    data.items_are_tasks = get_operation(op_type).target.name == "task"
    for body in case.bodies:
        if strategy is None:
            batch = await create(creator, {"type": op_type, **body(data)})
            await wait_for(creator, batch["id"])
        else:
            with pipeline.forced(strategy):
                batch = await create(creator, {"type": op_type, **body(data)})
                await wait_for(creator, batch["id"])
        data.batches.append(batch["id"])
    return await _snapshot(sm, creator, data)


async def _snapshot(
    sm: async_sessionmaker[AsyncSession], creator: Actor, data: DataSet
) -> dict[str, Any]:
    """Every row the batches could touch, with ids replaced by positions in the data set
    (``i3``: its fourth instance, ``t3``: that instance's first task, ``b0``: its first
    batch) and timestamps left out."""
    instance_names = {iid: f"i{n}" for n, iid in enumerate(data.instances)}
    task_names = {tid: f"t{n}" for n, tid in enumerate(data.tasks)}
    batch_names = {bid: f"b{n}" for n, bid in enumerate(data.batches)}
    by_word = {"process": instance_names, "task": task_names, "batch": batch_names}

    def name(names: dict[int, str], value: int | None) -> str:
        return names.get(value, str(value)) if value is not None else ""

    def text(value: str | None) -> str:
        """A message with its key and the ids it names (``Process 12``) replaced."""
        if value is None:
            return ""
        return re.sub(
            r"\b(process|task|batch) (\d+)\b",
            lambda m: f"{m[1]} {name(by_word[m[1].lower()], int(m[2]))}",
            value.replace(data.key, "<key>"),
            flags=re.IGNORECASE,
        )

    async with sm() as s:
        instances = (
            await s.execute(
                select(
                    ProcessInstance.id,
                    ProcessDefinition.version,
                    ProcessInstance.status,
                    ProcessInstance.current_node_id,
                    ProcessInstance.form_data,
                    ProcessInstance.variables,
                )
                .join(ProcessDefinition, ProcessDefinition.id == ProcessInstance.definition_id)
                .where(ProcessInstance.id.in_(data.instances))
            )
        ).all()
        tasks = (
            await s.execute(
                select(
                    Task.id,
                    Task.instance_id,
                    Task.node_id,
                    Task.assignee_id,
                    Task.status,
                    Task.decision,
                    Task.comment,
                    Task.locked_by_batch_id,
                ).where(Task.instance_id.in_(data.instances))
            )
        ).all()
        # Tasks a batch created (the next step) are named by their instance and step.
        task_names.update(
            {
                t.id: f"{name(instance_names, t.instance_id)}:{t.node_id}"
                for t in tasks
                if t.id not in task_names
            }
        )
        logs = (
            await s.execute(
                select(
                    ProcessLog.instance_id,
                    ProcessLog.task_id,
                    ProcessLog.actor_id,
                    ProcessLog.batch_id,
                    ProcessLog.action,
                    ProcessLog.message,
                ).where(ProcessLog.instance_id.in_(data.instances))
            )
        ).all()
        archives = (
            await s.execute(
                select(
                    InstanceArchive.instance_id,
                    InstanceArchive.deleted_by,
                    InstanceArchive.batch_id,
                ).where(InstanceArchive.instance_id.in_(data.instances))
            )
        ).all()
        details = (
            await s.execute(
                select(
                    BatchDetail.batch_id,
                    BatchDetail.item_id,
                    BatchDetail.status,
                    BatchDetail.error,
                    BatchDetail.error_code,
                    BatchDetail.retryable,
                    BatchDetail.retry_count,
                ).where(BatchDetail.batch_id.in_(data.batches))
            )
        ).all()
    batches = [await get_batch(creator, bid) for bid in data.batches]
    item_names = task_names if data.items_are_tasks else instance_names
    return {
        "instances": sorted(
            (
                name(instance_names, r.id),
                r.version,
                r.status,
                r.current_node_id,
                r.form_data,
                r.variables,
            )
            for r in instances
        ),
        "tasks": sorted(
            (
                name(task_names, t.id),
                name(instance_names, t.instance_id),
                t.node_id,
                t.assignee_id,
                t.status,
                t.decision or "",
                t.comment or "",
                name(batch_names, t.locked_by_batch_id),
            )
            for t in tasks
        ),
        "logs": sorted(
            (
                name(instance_names, r.instance_id),
                name(task_names, r.task_id),
                r.actor_id or 0,
                name(batch_names, r.batch_id),
                r.action,
                text(r.message),
            )
            for r in logs
        ),
        "archives": sorted(
            (name(instance_names, r.instance_id), r.deleted_by or 0, name(batch_names, r.batch_id))
            for r in archives
        ),
        "details": sorted(
            (
                batch_names[r.batch_id],
                name(item_names, r.item_id),
                r.status,
                text(r.error),
                r.error_code or "",
                str(r.retryable),  # None, True or False: sortable as text
                r.retry_count,
            )
            for r in details
        ),
        "batches": [
            {k: b[k] for k in ("status", "total", "success", "failed", "ignored", "cancelled")}
            for b in batches
        ],
    }


def _combinations() -> list[Any]:
    """Every built-in type × every strategy this backend offers for it (and the automatic
    choice): what cannot run here (a fused path on SQLite) is not generated at all."""
    return [
        pytest.param(op_type, strategy, id=f"{op_type}-{strategy or 'automatic'}")
        for op_type in CASES
        for strategy in STRATEGIES
        if strategy is None or strategy in pipeline.strategies_for(get_operation(op_type), DIALECT)
    ]


@pytest.mark.parametrize(("op_type", "strategy"), _combinations())
async def test_every_strategy_leaves_the_same_rows(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    op_type: str,
    strategy: Strategy | None,
) -> None:
    actors = Actors(admin, alice, bob)
    # Ids start well above the small numbers that messages hold on their own.
    await _data_set(sessionmaker, actors, "padding")
    reference = await _run(sessionmaker, actors, op_type, "zzref", Strategy.CLAIM_AND_APPLY)
    tried = await _run(sessionmaker, actors, op_type, "zztried", strategy)
    assert reference["details"], "the batch decided nothing"
    for table in reference:
        assert tried[table] == reference[table], table
