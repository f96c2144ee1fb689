"""Approving and rejecting tasks — one implementation for the single-approval endpoint
and for ``task.approve`` batches.

It is set-based: a whole chunk is loaded with one query (rows locked on PostgreSQL),
every item is validated in Python, and the results are written with a handful of bulk
statements (tasks, instances, next tasks, process logs) whatever the chunk size.
"""

from __future__ import annotations

import json
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import (
    Row,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in, insert_rows, update_rows
from app.domain import DetailStatus, ErrorCode, Outcome
from app.errors import (
    MAX_LISTED_ERRORS,
    AppError,
    Conflict,
    Forbidden,
    NotFound,
    ValidationFailed,
    join_messages,
)
from app.models import ProcessDefinition, ProcessInstance, ProcessLog, Task, User
from app.workflow.forms import NodeRules, find_node, is_empty
from app.workflow.logs import write_process_logs

DECISIONS = ("approve", "reject")

_tasks = cast(Table, Task.__table__)
_instances = cast(Table, ProcessInstance.__table__)
_logs = cast(Table, ProcessLog.__table__)


@dataclass
class ApprovalInput:
    task_id: int
    decision: str
    comment: str | None = None
    form_data: dict[str, Any] = field(default_factory=dict)
    next_assignee_id: int | None = None


def raise_for_single(outcome: Outcome) -> None:
    """Turn a failed/ignored single approval into the matching HTTP error."""
    if outcome.status == DetailStatus.SUCCESS:
        return
    message = outcome.error or "The task could not be approved."
    errors: dict[ErrorCode | None, type[AppError]] = {
        ErrorCode.NOT_FOUND: NotFound,
        ErrorCode.FORBIDDEN: Forbidden,
        ErrorCode.VALIDATION: ValidationFailed,
    }
    raise errors.get(outcome.error_code, Conflict)(message, fields=outcome.fields)


def task_gate(
    task_id: int, row: Any, *, actor_id: int, actor_is_admin: bool, batch_id: int | None
) -> Outcome | None:
    """The checks before any form rule — who may decide, whether there is anything to
    decide, who holds the lock — in an order that never reveals a task the actor cannot
    see: a hidden task fails exactly like a missing one. ``row`` has
    ``task_status``, ``assignee_id`` and ``locked_by_batch_id`` (or is None). Used by
    approval and by batch creation, which locks only the tasks that pass it."""
    if row is None or (row.assignee_id != actor_id and not actor_is_admin):
        return Outcome.failed(ErrorCode.NOT_FOUND, f"Task {task_id} does not exist.")
    if row.task_status == "cancelled":  # its process ended: nothing left to decide
        return Outcome.failed(
            ErrorCode.WRONG_STATE,
            f"Task {task_id} was cancelled when its process ended; there is nothing to decide.",
        )
    if row.task_status != "pending":  # decided already (here or elsewhere): nothing to do
        return Outcome.ignored(f"Task {task_id} is already {row.task_status}.")
    if row.assignee_id != actor_id:
        return Outcome.failed(ErrorCode.FORBIDDEN, f"Only the assignee may decide task {task_id}.")
    if row.locked_by_batch_id is not None and row.locked_by_batch_id != batch_id:
        return Outcome.failed(
            ErrorCode.LOCKED, f"Task {task_id} is locked by batch {row.locked_by_batch_id}."
        )
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

    Rules: only the assignee, only a pending task of an active instance,
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
            return Outcome.ignored(f"Task {tid} appears twice; it was decided once.")
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
            return Outcome.failed(
                ErrorCode.WRONG_STATE,
                f"The process of task {tid} is {row.instance_status}, not active.",
            )
        if item.decision not in DECISIONS:
            return Outcome.failed(ErrorCode.VALIDATION, "Decision must be approve or reject.")
        if row.instance_id in self.touched_instances:
            # Another task of the same process went first in this chunk: a later run
            # sees the process as it now is, so this one is worth retrying by itself.
            return Outcome.failed(
                ErrorCode.TRANSIENT, f"Task {tid}'s process changed meanwhile; retry it."
            )
        found = self.definitions.node(row.definition_id, row.node_id)
        if found is None:
            return Outcome.failed(
                ErrorCode.CONFLICT, f"Step {row.node_id} of task {tid} no longer exists."
            )
        index, _node, rules = found
        form_data = row.form_data or {}
        patch: dict[str, Any] = {}
        status, current_node = "rejected", row.node_id
        if item.decision == "approve":
            changes = item.form_data or {}
            form_data, errors = rules.merge(form_data, changes)
            if errors:
                return Outcome.failed(
                    ErrorCode.VALIDATION,
                    join_messages([e.message for e in errors]),
                    [e.as_dict() for e in errors[:MAX_LISTED_ERRORS]],
                )
            patch = {name: form_data[name] for name in changes}
            if item.next_assignee_id is not None and item.next_assignee_id not in self.known_users:
                return Outcome.failed(
                    ErrorCode.VALIDATION, f"User {item.next_assignee_id} does not exist."
                )
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
        return Outcome.success()

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


@dataclass(frozen=True)
class _SeedStep:
    """What approving (or rejecting) a task at one step of one definition with a
    batch's shared params does — decided once per step, for every task of a seed page
    at that step. ``required``: fields the form data does not fill that each process
    must already hold."""

    def_id: int
    node_id: str
    next_node: str | None
    next_assignee: int | None
    status: str
    current_node: str | None
    patch: dict[str, Any]
    required: list[str]


@dataclass(frozen=True)
class _SeedShared:
    """The values every task of a seed page is decided with."""

    actor: int
    batch: int
    now: Any
    decision: str
    comment: str | None
    action: str


PageRow = Row[*tuple[Any, ...]]
"""A task of a seed page as ``approve_at_seed`` reads it: its id first (the page's own
column), then ``definition_id`` and ``node_id``; on SQLite also ``instance_id`` and
``open`` (pending, the actor's, unlocked or this batch's, process active)."""


async def approve_at_seed(
    session: AsyncSession,
    actor_id: int,
    batch_id: int,
    params: dict[str, Any],
    page: Select[Any],
) -> tuple[list[int], set[int]]:
    """Read a ``task.approve`` filter batch's seed page (``page``: its tasks joined with
    their processes, ids ascending) and approve (or reject) every task that certainly
    passes every rule of ``approve_tasks`` with the batch's shared ``params``; return
    the page's task ids and those applied. The rest is left untouched for
    ``approve_tasks`` to decide (and say why): no lock, no claim and no second write of
    the detail for those applied.

    The page's read gives each task's step, so the shared form data is checked once per
    (definition, step) in Python (``_seed_steps``; a step where it fails is left out
    entirely). What depends on each process — the task is pending, the actor's and free
    of other batches' locks, the process active, the step's required fields not in the
    form data already hold a value, and no other task of the same process is in the
    page — is checked per task: on PostgreSQL inside the one statement that also writes
    everything, on rows it locks as ``approve_tasks`` does (only ids travel through
    Python); on SQLite in Python over the page's read (which also returns each task's
    process and state), inside the page's transaction, which holds SQLite's only writer
    — nothing changes between the read and the writes."""
    postgres = session.get_bind().dialect.name == "postgresql"
    read = page.add_columns(ProcessInstance.definition_id, Task.node_id)
    if not postgres:
        is_open = and_(
            Task.status == "pending",
            Task.assignee_id == actor_id,
            or_(Task.locked_by_batch_id.is_(None), Task.locked_by_batch_id == batch_id),
            ProcessInstance.status == "active",
        )
        read = read.add_columns(Task.instance_id, is_open.label("open"))
    rows = list((await session.execute(read)).all())
    page_ids = [r[0] for r in rows]
    decision = params.get("decision", "approve")
    if not rows or decision not in DECISIONS:
        return page_ids, set()
    next_assignee = params.get("next_assignee_id")
    if next_assignee is not None and await session.get(User, next_assignee) is None:
        return page_ids, set()
    steps = await _seed_steps(
        session, decision, params, {(r.definition_id, r.node_id) for r in rows}
    )
    if not steps:
        return page_ids, set()
    shared = _SeedShared(
        actor=actor_id,
        batch=batch_id,
        now=utcnow(),
        decision=decision,
        comment=params.get("comment"),
        action="task.approved" if decision == "approve" else "task.rejected",
    )
    if postgres:
        return page_ids, await _approve_at_seed_pg(session, shared, page_ids, steps)
    chosen = await _chosen(session, rows, steps)
    await _approve_at_seed_sqlite(session, shared, chosen, steps)
    return page_ids, {row[0] for row, _ in chosen}


async def _seed_steps(
    session: AsyncSession, decision: str, params: dict[str, Any], keys: set[tuple[int, str]]
) -> dict[tuple[int, str], _SeedStep]:
    """Each (definition, step) of ``keys`` where the shared params pass the node's own
    rules."""
    next_assignee = params.get("next_assignee_id")
    changes: dict[str, Any] = params.get("form_data") or {}
    definitions = definitions_for(session)
    await definitions.load(session, {def_id for def_id, _ in keys})
    steps: dict[tuple[int, str], _SeedStep] = {}
    for def_id, node_id in sorted(keys):
        found = definitions.node(def_id, node_id)
        if found is None:
            continue  # a step that no longer exists: approve_tasks says so
        index, _node, rules = found
        key = (def_id, node_id)
        if decision == "reject":
            steps[key] = _SeedStep(def_id, node_id, None, None, "rejected", node_id, {}, [])
            continue
        merged, errors = rules.merge({}, changes)
        if any(e.field in changes for e in errors):
            continue  # the shared form data itself is refused here: every item fails alike
        required = [e.field for e in errors]
        patch = {name: merged[name] for name in changes}
        nodes = definitions.nodes(def_id)
        if index + 1 < len(nodes):
            nxt = nodes[index + 1]
            assignee = next_assignee or nxt["assignee_id"]
            moves_to = nxt["id"]
            steps[key] = _SeedStep(
                def_id, node_id, moves_to, assignee, "active", moves_to, patch, required
            )
        else:
            steps[key] = _SeedStep(def_id, node_id, None, None, "completed", None, patch, required)
    return steps


async def _chosen(
    session: AsyncSession, rows: list[PageRow], steps: dict[tuple[int, str], _SeedStep]
) -> list[tuple[PageRow, _SeedStep]]:
    """SQLite: the open tasks of the page at a step where the params pass, whose process
    holds every field the step requires that the form data does not fill (read only
    when a step has such fields), and that are the only task of their process in the
    page."""
    candidates = [
        (r, steps[(r.definition_id, r.node_id)])
        for r in rows
        if r.open and (r.definition_id, r.node_id) in steps
    ]
    checked = {r.instance_id for r, step in candidates if step.required}
    if checked:
        forms: dict[int, dict[str, Any] | None] = dict(
            (
                await session.execute(
                    select(ProcessInstance.id, ProcessInstance.form_data).where(
                        id_in(session, ProcessInstance.id, sorted(checked))
                    )
                )
            )
            .tuples()
            .all()
        )
        candidates = [
            (r, step)
            for r, step in candidates
            if not any(is_empty((forms.get(r.instance_id) or {}).get(f)) for f in step.required)
        ]
    per_process = Counter(r.instance_id for r, _ in candidates)
    return [(r, step) for r, step in candidates if per_process[r.instance_id] == 1]


async def _approve_at_seed_pg(
    session: AsyncSession,
    shared: _SeedShared,
    task_ids: list[int],
    steps: dict[tuple[int, str], _SeedStep],
) -> set[int]:
    """PostgreSQL: every per-task rule and every write in one statement; returns the
    ids it approved."""
    ordered = list(steps.values())
    # A plan for these very arrays. One prepared statement reused for every page would
    # switch to a generic plan after five runs, which joins the page's rows with each
    # other (measured: 44 µs → 6 ms per item). ``SET LOCAL plan_cache_mode =
    # force_custom_plan`` avoided that but also replanned every foreign-key check of the
    # inserted tasks and logs (3 per item: 4× their cost). So each page's statement is
    # its own text — it names its batch and first task (handy in pg_stat_activity;
    # pg_stat_statements ignores comments) — and is planned for its arrays once.
    label = f"/* batchd seed: batch {int(shared.batch)}, tasks from {int(task_ids[0])} */"
    applied = await session.scalars(
        text(label + _SEED_APPROVE_PG),
        {
            "ids": task_ids,
            "actor": shared.actor,
            "batch": shared.batch,
            "now": shared.now,
            "decision": shared.decision,
            "comment": shared.comment,
            "action": shared.action,
            "g_def": [s.def_id for s in ordered],
            "g_node": [s.node_id for s in ordered],
            "g_next_node": [s.next_node for s in ordered],
            "g_next_assignee": [s.next_assignee for s in ordered],
            "g_status": [s.status for s in ordered],
            "g_current": [s.current_node for s in ordered],
            "g_patch": [json.dumps(s.patch) for s in ordered],
            "g_required": [json.dumps(s.required) for s in ordered],
        },
    )
    return set(applied)


_SEED_APPROVE_PG = """
WITH g AS (
    SELECT * FROM unnest(
        CAST(:g_def AS BIGINT[]), CAST(:g_node AS VARCHAR[]), CAST(:g_next_node AS VARCHAR[]),
        CAST(:g_next_assignee AS BIGINT[]), CAST(:g_status AS VARCHAR[]),
        CAST(:g_current AS VARCHAR[]), CAST(:g_patch AS JSONB[]), CAST(:g_required AS JSONB[])
    ) AS g(def_id, node_id, next_node, next_assignee, status, current_node, patch, required)
), cand AS (
    SELECT t.id, t.instance_id, g.next_node, g.next_assignee, g.status, g.current_node,
           g.patch
    FROM tasks AS t
    JOIN process_instances AS p ON p.id = t.instance_id
    JOIN g ON g.def_id = p.definition_id AND g.node_id = t.node_id
    WHERE t.id = ANY(CAST(:ids AS BIGINT[]))
      AND t.status = 'pending' AND t.assignee_id = CAST(:actor AS BIGINT)
      AND (t.locked_by_batch_id IS NULL OR t.locked_by_batch_id = CAST(:batch AS BIGINT))
      AND p.status = 'active'
      AND NOT EXISTS (
          SELECT FROM jsonb_array_elements_text(g.required) AS r(name)
          WHERE COALESCE(p.form_data -> r.name, 'null'::jsonb)
                IN ('null'::jsonb, '""'::jsonb, '[]'::jsonb)
      )
    FOR UPDATE OF t, p
), uniq AS (
    SELECT * FROM cand
    WHERE instance_id IN (SELECT instance_id FROM cand GROUP BY instance_id HAVING count(*) = 1)
), done AS (
    UPDATE tasks
    SET status = 'completed', decision = CAST(:decision AS VARCHAR),
        comment = CAST(:comment AS TEXT), completed_at = CAST(:now AS TIMESTAMPTZ),
        locked_by_batch_id = NULL
    WHERE id = ANY(ARRAY(SELECT id FROM uniq))
    RETURNING id
), moved AS (
    UPDATE process_instances AS p
    SET form_data = COALESCE(p.form_data, '{}'::jsonb) || u.patch, status = u.status,
        current_node_id = u.current_node, updated_at = CAST(:now AS TIMESTAMPTZ)
    FROM uniq AS u
    WHERE p.id = u.instance_id
), created AS (
    INSERT INTO tasks (instance_id, node_id, assignee_id, status, created_at)
    SELECT instance_id, next_node, next_assignee, 'pending', CAST(:now AS TIMESTAMPTZ)
    FROM uniq WHERE next_node IS NOT NULL
), logged AS (
    INSERT INTO process_logs (instance_id, task_id, actor_id, batch_id, action, message,
                              created_at)
    SELECT instance_id, id, CAST(:actor AS BIGINT), CAST(:batch AS BIGINT),
           CAST(:action AS VARCHAR), CAST(:comment AS TEXT), CAST(:now AS TIMESTAMPTZ)
    FROM uniq
)
SELECT id FROM done
"""


async def _approve_at_seed_sqlite(
    session: AsyncSession,
    shared: _SeedShared,
    chosen: list[tuple[PageRow, _SeedStep]],
    steps: dict[tuple[int, str], _SeedStep],
) -> None:
    """SQLite: a statement per table (per step for the processes) — no per-task
    documents, and each process's form data written as the patch (``json_patch``), not
    re-encoded."""
    done = [r[0] for r, _ in chosen]
    now = bindparam("now", shared.now, type_=_tasks.c.created_at.type)
    await session.execute(
        update(_tasks)
        .where(id_in(session, _tasks.c.id, done))
        .values(
            status="completed",
            decision=shared.decision,
            comment=shared.comment,
            completed_at=now,
            locked_by_batch_id=None,
        )
    )
    for step in steps.values():
        here = [r for r, s in chosen if s is step]
        if not here:
            continue
        moved: dict[str, Any] = {
            "status": step.status,
            "current_node_id": step.current_node,
            "updated_at": now,
        }
        if step.patch:
            moved["form_data"] = _sqlite_merged(_instances.c.form_data, step.patch)
        await session.execute(
            update(_instances)
            .where(id_in(session, _instances.c.id, [r.instance_id for r in here]))
            .values(**moved)
        )
        if step.next_node is not None:
            await session.execute(
                insert(_tasks).from_select(
                    ["instance_id", "node_id", "assignee_id", "status", "created_at"],
                    select(
                        _tasks.c.instance_id,
                        literal(step.next_node),
                        literal(step.next_assignee),
                        literal("pending"),
                        now,
                    )
                    .where(id_in(session, _tasks.c.id, [r[0] for r in here]))
                    .order_by(_tasks.c.id),
                )
            )
    await session.execute(
        insert(_logs).from_select(
            ["instance_id", "task_id", "actor_id", "batch_id", "action", "message", "created_at"],
            select(
                _tasks.c.instance_id,
                _tasks.c.id,
                literal(shared.actor),
                literal(shared.batch),
                literal(shared.action),
                literal(shared.comment, Text()),
                now,
            )
            .where(id_in(session, _tasks.c.id, done))
            .order_by(_tasks.c.id),
        )
    )


def _sqlite_merged(column: Any, patch: dict[str, Any]) -> Any:
    """SQLite's ``form_data || patch`` (PostgreSQL's top-level merge): ``json_patch``
    for the values — a form value is never an object, so its recursive merge is the
    same — except that it drops keys whose value is null, so those are set with
    ``json_set`` (field names are identifiers, so the path needs no escaping)."""
    values = {k: v for k, v in patch.items() if v is not None}
    merged = func.json_patch(func.coalesce(column, "{}"), json.dumps(values))
    nulls = [k for k, v in patch.items() if v is None]
    if nulls:
        pairs = [arg for k in nulls for arg in (f'$."{k}"', func.json("null"))]
        merged = func.json_set(merged, *pairs)
    return merged


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
    if outcome.status == DetailStatus.IGNORED:
        raise Conflict(outcome.error or f"Task {task_id} is not pending.")
    raise_for_single(outcome)
    task = await session.get(Task, task_id, populate_existing=True)
    assert task is not None
    return task
