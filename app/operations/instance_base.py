"""What every instance operation shares: one chunk is loaded with one query (rows
locked), each item passes the same gate — exists and is visible to the creator, the
creator is an admin or holds a monitor grant for its definition — then
the type decides it (``decide``: success, ignored or failed with the reason) and writes
every success with a few bulk statements (``write``), plus one process log row per
changed instance naming the batch.

A type subclasses ``InstanceOperation`` and fills in ``decide`` and ``write`` (and
``prepare`` when it needs more than the instance row, ``pg_update`` for a PostgreSQL
statement that applies the easy items before anything is loaded — also fused with the
executor's claim). Everything runs on both backends; ``pg_update`` is a PostgreSQL-only
shortcut that must change exactly what ``decide`` + ``write`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy import ColumnElement, select, text, true
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in
from app.domain import BatchRun, DetailStatus, ErrorCode, Outcome, WorkItem
from app.models import ProcessInstance, User
from app.operations.pipeline import shortcuts_apply
from app.operations.registry import BulkSql, Operation
from app.operations.targets import INSTANCES
from app.workflow.logs import write_process_logs
from app.workflow.permissions import Operator, load_operator
from app.workflow.queries import instance_visibility_clause

ENDED = ("completed", "rejected", "terminated")
"""Instance states no operation brings back (but delete)."""

BASE_COLUMNS: tuple[Any, ...] = (
    ProcessInstance.id,
    ProcessInstance.definition_key,
    ProcessInstance.definition_id,
    ProcessInstance.status,
    ProcessInstance.current_node_id,
)


def failed(message: str, code: ErrorCode = ErrorCode.WRONG_STATE) -> Outcome:
    """Most refusals of an instance type are its state (completed, not suspended…)."""
    return Outcome.failed(code, message)


def ignored(message: str) -> Outcome:
    return Outcome.ignored(message)


SUCCESS = Outcome.success()


@dataclass(frozen=True)
class PgUpdate:
    """A type's PostgreSQL fast path: ``update`` is an ``UPDATE process_instances … WHERE
    id = ANY({targets}) AND <only the rows it may change without a decision>
    {permission} RETURNING id`` (times as ``CAST(:now AS TIMESTAMPTZ)``); ``extra`` are
    more CTEs (``, name AS (…)``) that may read ``applied``; ``message`` goes into each
    process log row. Items it does not change go through ``decide``, which says why."""

    update: str
    params: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    extra: str = ""


_LOGGED = """, logged AS (
    INSERT INTO process_logs (instance_id, actor_id, batch_id, action, message, created_at)
    SELECT id, CAST(:actor AS BIGINT), CAST(:batch AS BIGINT), CAST(:action AS VARCHAR),
           CAST(:message AS TEXT), CAST(:now AS TIMESTAMPTZ)
    FROM applied
)"""


class InstanceOperation(Operation):
    target = INSTANCES
    supports_dry_run = True
    fuse_at_seed = True
    verb: ClassVar[str]
    """For "You may not <verb> processes of <key>."."""
    columns: ClassVar[tuple[Any, ...]] = ()
    """Instance columns ``decide``/``write`` need beyond ``BASE_COLUMNS``."""

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        operator = await load_operator(session, run.creator_id)
        ids = sorted({i.item_id for i in items})
        fast = operator is not None and not run.dry_run
        done = await self.fast_path(session, run, operator, ids) if fast and operator else set()
        rest = [i for i in ids if i not in done]
        rows = await self._load(session, run, rest) if rest and operator else {}
        prepared = await self.prepare(session, run, list(rows.values()))
        outcomes: list[Outcome] = []
        todo: list[Any] = []
        seen: set[int] = set()
        for item in items:
            if item.item_id in seen:
                outcomes.append(ignored(f"Process {item.item_id} is listed twice."))
                continue
            seen.add(item.item_id)
            if item.item_id in done:
                outcomes.append(SUCCESS)
                continue
            row = rows.get(item.item_id)
            outcome = self._gate(operator, item.item_id, row) or self.decide(run, row, prepared)
            if outcome.status == DetailStatus.SUCCESS:
                todo.append(row)
            outcomes.append(outcome)
        if todo and not run.dry_run:
            await self.write(session, run, todo, prepared)
        return outcomes

    async def _load(self, session: AsyncSession, run: BatchRun, ids: list[int]) -> dict[int, Any]:
        """The chunk's instances, row-locked, each with whether the creator may see it."""
        creator = await session.get(User, run.creator_id)
        if creator is None:
            return {}
        visible: ColumnElement[bool] = (
            true() if creator.is_admin else instance_visibility_clause(creator)
        )
        query = (
            select(*BASE_COLUMNS, *self.columns, visible.label("visible"))
            .where(id_in(session, ProcessInstance.id, ids))
            .order_by(ProcessInstance.id)
        )
        if not run.dry_run:
            query = query.with_for_update(of=ProcessInstance)
        result = await session.execute(query)
        return {r.id: r for r in result}

    def _gate(self, operator: Operator | None, item_id: int, row: Any) -> Outcome | None:
        """Missing or hidden (the same sentence, so ids leak nothing), then permission."""
        if row is None or not row.visible or operator is None:
            return failed(f"Process {item_id} does not exist.", ErrorCode.NOT_FOUND)
        if not operator.may_operate(row.definition_key):
            return failed(
                f"You may not {self.verb} processes of {row.definition_key}.",
                ErrorCode.FORBIDDEN,
            )
        return None

    @property
    def executes_fused(self) -> bool:
        """Only a type with a one-statement form has a fused path (``bulk_sql``)."""
        return type(self).pg_update is not InstanceOperation.pg_update

    def pg_update(self, run: BatchRun) -> PgUpdate | None:
        """The PostgreSQL one-statement form of this type, or None (see ``PgUpdate``)."""
        return None

    async def fast_path(
        self, session: AsyncSession, run: BatchRun, operator: Operator, ids: list[int]
    ) -> set[int]:
        """PostgreSQL: apply every item ``pg_update`` can take in one statement, before
        anything is loaded; return those ids (the rest go through ``decide``)."""
        if not shortcuts_apply(session.get_bind().dialect.name):
            return set()
        built = self._one_statement(run, operator, "CAST(:ids AS BIGINT[])")
        if built is None:
            return set()
        ctes, params = built
        stmt = text(f"WITH {ctes} SELECT id FROM applied")
        return set(await session.scalars(stmt, {**params, "ids": ids}))

    async def bulk_sql(self, session: AsyncSession, run: BatchRun) -> BulkSql | None:
        """The same statement fused with the executor's claim and detail results."""
        operator = await load_operator(session, run.creator_id)
        if operator is None:
            return None
        built = self._one_statement(run, operator, "ARRAY(SELECT item_id FROM claimed)")
        return BulkSql(*built) if built is not None else None

    def _one_statement(
        self, run: BatchRun, operator: Operator, targets: str
    ) -> tuple[str, dict[str, Any]] | None:
        """``applied`` (the type's UPDATE, limited to what the creator may operate on),
        ``logged`` (one process log row each) and the type's extra CTEs."""
        spec = self.pg_update(run)
        if spec is None:
            return None
        params: dict[str, Any] = {
            **spec.params,
            "now": utcnow(),
            "actor": run.creator_id,
            "batch": run.batch_id,
            "action": self.type,
            "message": spec.message,
        }
        permission = ""
        if not operator.is_admin:
            permission = "AND definition_key = ANY(CAST(:granted AS VARCHAR[]))"
            params["granted"] = sorted(operator.keys)
        update = spec.update.format(targets=targets, permission=permission)
        return f"applied AS ({update}){_LOGGED}{spec.extra}", params

    async def prepare(self, session: AsyncSession, run: BatchRun, rows: list[Any]) -> Any:
        """Load what ``decide``/``write`` need besides the rows (once per chunk)."""
        return None

    def decide(self, run: BatchRun, row: Any, prepared: Any) -> Outcome:
        """success, ignored or failed (with the reason) for one permitted instance."""
        raise NotImplementedError

    async def write(
        self, session: AsyncSession, run: BatchRun, rows: list[Any], prepared: Any
    ) -> None:
        """Apply every decided success with a few bulk statements, logs included."""
        raise NotImplementedError

    async def log(
        self,
        session: AsyncSession,
        run: BatchRun,
        ids: Sequence[int],
        message: str | None = None,
    ) -> None:
        """One process log row per changed instance, naming the batch."""
        await write_process_logs(
            session,
            (
                {
                    "instance_id": iid,
                    "actor_id": run.creator_id,
                    "batch_id": run.batch_id,
                    "action": self.type,
                    "message": message,
                }
                for iid in ids
            ),
        )
