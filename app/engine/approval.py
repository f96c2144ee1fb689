"""Approving and rejecting tasks — one implementation for the single-approval endpoint
and for ``task.approve`` batches.

It is set-based: a whole chunk is loaded with one query (rows locked on PostgreSQL),
every item is validated in Python, and the results are written with a handful of bulk
statements (tasks, instances, next tasks, process logs) whatever the chunk size.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in, insert_rows, update_rows
from app.engine.forms import NodeRules, find_node
from app.engine.logs import write_process_logs
from app.errors import (
    MAX_LISTED_ERRORS,
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    ValidationFailed,
    join_messages,
)
from app.models import ProcessDefinition, ProcessInstance, Task, User

DECISIONS = ("approve", "reject")

_tasks = cast(Table, Task.__table__)
_instances = cast(Table, ProcessInstance.__table__)


@dataclass
class ApprovalInput:
    task_id: int
    decision: str
    comment: str | None = None
    form_data: dict[str, Any] = field(default_factory=dict)
    next_assignee_id: int | None = None


@dataclass
class Outcome:
    """What happened to one item: ``success``, ``ignored`` or ``failed`` (+ why)."""

    status: str
    error: str | None = None
    kind: str | None = None
    """For failures: not_found | forbidden | conflict | locked | invalid."""
    fields: list[dict[str, Any]] | None = None

    def raise_for_single(self) -> None:
        """Turn a failed/ignored single approval into the matching HTTP error."""
        if self.status == "success":
            return
        message = self.error or "The task could not be approved."
        errors: dict[str | None, type[AppError]] = {
            "not_found": NotFound,
            "forbidden": Forbidden,
            "invalid": ValidationFailed,
        }
        raise errors.get(self.kind, Conflict)(message, fields=self.fields)


def _fail(kind: str, message: str, fields: list[dict[str, Any]] | None = None) -> Outcome:
    return Outcome("failed", message, kind, fields)


def task_gate(
    task_id: int, row: Any, *, actor_id: int, actor_is_admin: bool, batch_id: int | None
) -> Outcome | None:
    """The checks before any form rule — who may decide, whether there is anything to
    decide, who holds the lock — in an order that never reveals a task the actor cannot
    see: a hidden task fails exactly like a missing one (DESIGN.md §2). ``row`` has
    ``task_status``, ``assignee_id`` and ``locked_by_batch_id`` (or is None). Used by
    approval and by batch creation, which locks only the tasks that pass it."""
    if row is None or (row.assignee_id != actor_id and not actor_is_admin):
        return _fail("not_found", f"Task {task_id} does not exist.")
    if row.task_status != "pending":
        return Outcome("ignored", f"Task {task_id} is already {row.task_status}.")
    if row.assignee_id != actor_id:
        return _fail("forbidden", f"Only the assignee may decide task {task_id}.")
    if row.locked_by_batch_id is not None and row.locked_by_batch_id != batch_id:
        return _fail("locked", f"Task {task_id} is locked by batch {row.locked_by_batch_id}.")
    return None


class _DefinitionCache:
    """Definitions never change (a new version is a new row), so rules are cached."""

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit
        self.defs: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        self.rules: dict[tuple[int, str], NodeRules] = {}

    async def load(self, session: AsyncSession, ids: set[int]) -> None:
        missing = ids - self.defs.keys()
        if not missing:
            return
        if len(self.defs) > self.limit:
            self.defs.clear()
            self.rules.clear()
        rows = await session.execute(
            select(ProcessDefinition.id, ProcessDefinition.form, ProcessDefinition.nodes).where(
                ProcessDefinition.id.in_(missing)
            )
        )
        for def_id, form, nodes in rows:
            self.defs[def_id] = (form or [], nodes or [])

    def node(self, def_id: int, node_id: str) -> tuple[int, dict[str, Any], NodeRules] | None:
        form, nodes = self.defs[def_id]
        found = find_node(nodes, node_id)
        if found is None:
            return None
        key = (def_id, node_id)
        if key not in self.rules:
            self.rules[key] = NodeRules.build(form, found[1])
        return found[0], found[1], self.rules[key]

    def nodes(self, def_id: int) -> list[dict[str, Any]]:
        return self.defs[def_id][1]


_CACHES: weakref.WeakKeyDictionary[Engine, _DefinitionCache] = weakref.WeakKeyDictionary()


def definitions_for(session: AsyncSession) -> _DefinitionCache:
    """One cache per database engine: ids are only unique within one database."""
    engine = session.sync_session.get_bind()
    assert isinstance(engine, Engine)
    cache = _CACHES.get(engine)
    if cache is None:
        cache = _CACHES[engine] = _DefinitionCache()
    return cache


async def approve_tasks(
    session: AsyncSession,
    actor_id: int,
    items: list[ApprovalInput],
    *,
    batch_id: int | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Apply approvals/rejections for a set of tasks; returns one outcome per item, in
    order (a task listed twice is done once; the repeat is ``ignored``).

    Rules (DESIGN.md §2): only the assignee, only a pending task of an active instance,
    never while another batch holds the task's lock; on approve, only ``write`` fields
    merge into the instance, types and options are checked and required fields must be
    present afterwards; the next node's task is created (assignee = next_assignee_id or
    the node's) or the instance completes at the last node. Reject completes the task
    and sets the instance ``rejected``.
    """
    if not items:
        return []
    ids = sorted({i.task_id for i in items})
    query = (
        select(
            Task.id.label("task_id"),
            Task.instance_id,
            Task.node_id,
            Task.assignee_id,
            Task.status.label("task_status"),
            Task.locked_by_batch_id,
            ProcessInstance.status.label("instance_status"),
            ProcessInstance.definition_id,
            ProcessInstance.form_data,
        )
        .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
        .where(id_in(session, Task.id, ids))
        .order_by(Task.id)
    )
    if not dry_run:  # a prediction locks nothing
        query = query.with_for_update(of=[Task.__table__, ProcessInstance.__table__])
    rows = {r.task_id: r for r in await session.execute(query)}
    definitions = definitions_for(session)
    await definitions.load(session, {r.definition_id for r in rows.values()})
    wanted_assignees = {i.next_assignee_id for i in items if i.next_assignee_id is not None}
    known_users: set[int] = set()
    if wanted_assignees:
        known_users = set(
            await session.scalars(select(User.id).where(User.id.in_(wanted_assignees)))
        )

    actor_role = await session.scalar(select(User.role).where(User.id == actor_id))
    plan = _Plan(
        definitions=definitions,
        now=utcnow(),
        actor_id=actor_id,
        actor_is_admin=actor_role == "admin",
        batch_id=batch_id,
        known_users=known_users,
    )
    results = [plan.decide(item, rows.get(item.task_id)) for item in items]
    if not dry_run:
        await plan.write(session)
    return results


@dataclass
class _Plan:
    """Collects the bulk writes for one chunk while deciding each item."""

    definitions: _DefinitionCache
    now: Any
    actor_id: int
    actor_is_admin: bool
    batch_id: int | None
    known_users: set[int]
    seen: set[int] = field(default_factory=set)
    touched_instances: set[int] = field(default_factory=set)
    task_updates: list[dict[str, Any]] = field(default_factory=list)
    instance_updates: list[dict[str, Any]] = field(default_factory=list)
    new_tasks: list[dict[str, Any]] = field(default_factory=list)

    def decide(self, item: ApprovalInput, row: Any) -> Outcome:
        tid = item.task_id
        if tid in self.seen:
            return Outcome("ignored", f"Task {tid} appears twice; it was decided once.")
        self.seen.add(tid)
        gate = task_gate(
            tid,
            row,
            actor_id=self.actor_id,
            actor_is_admin=self.actor_is_admin,
            batch_id=self.batch_id,
        )
        if gate is not None:
            return gate
        if row.instance_status != "active":
            return _fail(
                "conflict", f"The process of task {tid} is {row.instance_status}, not active."
            )
        if item.decision not in DECISIONS:
            return _fail("invalid", "Decision must be approve or reject.")
        if row.instance_id in self.touched_instances:
            return _fail("conflict", f"Task {tid}'s process changed meanwhile; retry it.")
        found = self.definitions.node(row.definition_id, row.node_id)
        if found is None:
            return _fail("conflict", f"Step {row.node_id} of task {tid} no longer exists.")
        index, _node, rules = found
        form_data = row.form_data or {}
        patch: dict[str, Any] = {}
        status, current_node = "rejected", row.node_id
        if item.decision == "approve":
            update = item.form_data or {}
            form_data, errors = rules.merge(form_data, update)
            if errors:
                return _fail(
                    "invalid",
                    join_messages([e.message for e in errors]),
                    [e.as_dict() for e in errors[:MAX_LISTED_ERRORS]],
                )
            patch = {name: form_data[name] for name in update}
            if item.next_assignee_id is not None and item.next_assignee_id not in self.known_users:
                return _fail("invalid", f"User {item.next_assignee_id} does not exist.")
            nodes = self.definitions.nodes(row.definition_id)
            if index + 1 < len(nodes):
                nxt = nodes[index + 1]
                status, current_node = "active", nxt["id"]
                self.new_tasks.append(
                    {
                        "instance_id": row.instance_id,
                        "node_id": nxt["id"],
                        "assignee_id": item.next_assignee_id or nxt["assignee_id"],
                    }
                )
            else:
                status, current_node = "completed", None
        self.touched_instances.add(row.instance_id)
        self.task_updates.append({"id": tid, "decision": item.decision, "comment": item.comment})
        self.instance_updates.append(
            {
                "id": row.instance_id,
                "form_data": form_data,
                "patch": patch,
                "status": status,
                "current_node_id": current_node,
            }
        )
        return Outcome("success")

    async def write(self, session: AsyncSession) -> None:
        """A handful of statements for the whole chunk, however many items it holds (on
        PostgreSQL one: every write in one CTE, rows passed as typed arrays)."""
        if not self.task_updates:
            return
        if session.get_bind().dialect.name == "postgresql":
            await self._write_in_one_statement(session)
            return
        await update_rows(
            session,
            _tasks,
            self.task_updates,
            constants={"status": "completed", "completed_at": self.now, "locked_by_batch_id": None},
        )
        await update_rows(
            session,
            _instances,
            [{k: v for k, v in u.items() if k != "patch"} for u in self.instance_updates],
            constants={"updated_at": self.now},
        )
        await insert_rows(
            session, _tasks, self.new_tasks, constants={"status": "pending", "created_at": self.now}
        )
        # One log row per decided task (the PostgreSQL statement derives the same rows).
        await write_process_logs(
            session,
            (
                {
                    "instance_id": instance["id"],
                    "task_id": task["id"],
                    "actor_id": self.actor_id,
                    "batch_id": self.batch_id,
                    "action": "task.approved" if task["decision"] == "approve" else "task.rejected",
                    "message": task["comment"],
                }
                for task, instance in zip(self.task_updates, self.instance_updates, strict=True)
            ),
        )

    async def _write_in_one_statement(self, session: AsyncSession) -> None:
        """Tasks completed, instances moved (only the changed fields merged into
        ``form_data``: ``form_data || patch``), next tasks and process logs — one round
        trip, one plan, no per-row JSON documents."""
        tasks, instances, new = self.task_updates, self.instance_updates, self.new_tasks
        await session.execute(
            text(_WRITE_PG),
            {
                "now": self.now,
                "actor": self.actor_id,
                "batch": self.batch_id,
                "task_ids": [t["id"] for t in tasks],
                "decisions": [t["decision"] for t in tasks],
                "comments": [t["comment"] for t in tasks],
                "instance_ids": [i["id"] for i in instances],
                "patches": [json.dumps(i["patch"]) for i in instances],
                "statuses": [i["status"] for i in instances],
                "nodes": [i["current_node_id"] for i in instances],
                "new_instances": [t["instance_id"] for t in new],
                "new_nodes": [t["node_id"] for t in new],
                "new_assignees": [t["assignee_id"] for t in new],
            },
        )


_WRITE_PG = """
WITH done AS (
    UPDATE tasks
    SET status = 'completed', decision = v.decision, comment = v.comment,
        completed_at = CAST(:now AS TIMESTAMPTZ), locked_by_batch_id = NULL
    FROM unnest(CAST(:task_ids AS BIGINT[]), CAST(:decisions AS VARCHAR[]),
                CAST(:comments AS TEXT[])) AS v(id, decision, comment)
    WHERE tasks.id = v.id AND tasks.id = ANY(CAST(:task_ids AS BIGINT[]))
    RETURNING tasks.id, tasks.instance_id, v.decision, v.comment
), moved AS (
    UPDATE process_instances
    SET form_data = process_instances.form_data || v.patch, status = v.status,
        current_node_id = v.node, updated_at = CAST(:now AS TIMESTAMPTZ)
    FROM unnest(CAST(:instance_ids AS BIGINT[]), CAST(:patches AS JSONB[]),
                CAST(:statuses AS VARCHAR[]), CAST(:nodes AS VARCHAR[]))
         AS v(id, patch, status, node)
    WHERE process_instances.id = v.id
      AND process_instances.id = ANY(CAST(:instance_ids AS BIGINT[]))
), created AS (
    INSERT INTO tasks (instance_id, node_id, assignee_id, status, created_at)
    SELECT v.instance_id, v.node_id, v.assignee_id, 'pending', CAST(:now AS TIMESTAMPTZ)
    FROM unnest(CAST(:new_instances AS BIGINT[]), CAST(:new_nodes AS VARCHAR[]),
                CAST(:new_assignees AS BIGINT[])) AS v(instance_id, node_id, assignee_id)
)
INSERT INTO process_logs (instance_id, task_id, actor_id, batch_id, action, message, created_at)
SELECT instance_id, id, CAST(:actor AS BIGINT), CAST(:batch AS BIGINT),
       CASE decision WHEN 'approve' THEN 'task.approved' ELSE 'task.rejected' END,
       comment, CAST(:now AS TIMESTAMPTZ)
FROM done
"""


async def approve_one(
    session: AsyncSession,
    user: User,
    task_id: int,
    *,
    decision: str,
    comment: str | None = None,
    form_data: dict[str, Any] | None = None,
    next_assignee_id: int | None = None,
) -> Task:
    """The single-approval endpoint: the same rules, errors raised as HTTP errors."""
    [outcome] = await approve_tasks(
        session,
        user.id,
        [ApprovalInput(task_id, decision, comment, form_data or {}, next_assignee_id)],
    )
    if outcome.status == "ignored":
        raise Conflict(outcome.error or f"Task {task_id} is not pending.")
    outcome.raise_for_single()
    task = await session.get(Task, task_id, populate_existing=True)
    assert task is not None
    return task
