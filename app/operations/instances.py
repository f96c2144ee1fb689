"""Instance state transitions (``instance.suspend``, ``instance.resume``), set-based.

On PostgreSQL the whole chunk moves in one statement — ``UPDATE … WHERE id = ANY(…)
AND status = ANY(:sources) [AND definition_key = ANY(:granted)] RETURNING id`` with the
process-log INSERT in the same CTE, fused by the executor with its claim and the detail
results (``bulk_sql``) — and only the items that did not move are read back to say why
(missing, not permitted, already there, wrong state). On SQLite the chunk is
loaded, decided in Python, and applied with one UPDATE and one INSERT.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import select, text, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in
from app.engine.approval import Outcome
from app.engine.logs import write_process_logs
from app.engine.permissions import Operator, load_operator
from app.engine.queries import instance_visibility_clause
from app.models import ProcessInstance, User
from app.operations.registry import BatchRun, BulkSql, Operation, WorkItem, register
from app.operations.targets import INSTANCES

_MOVE = """
applied AS (
    UPDATE process_instances
    SET status = CAST(:to_state AS VARCHAR), updated_at = CAST(:now AS TIMESTAMPTZ)
    WHERE id = ANY({targets}) AND status = ANY(CAST(:sources AS VARCHAR[]))
    {permission}
    RETURNING id
), logged AS (
    INSERT INTO process_logs (instance_id, actor_id, batch_id, action, created_at)
    SELECT id, CAST(:actor AS BIGINT), CAST(:batch AS BIGINT), CAST(:action AS VARCHAR),
           CAST(:now AS TIMESTAMPTZ)
    FROM applied
)"""


class InstanceTransition(Operation):
    """Move instances from one of ``sources`` to ``to_state``; already there → ignored."""

    target = INSTANCES
    sources: ClassVar[tuple[str, ...]]
    to_state: ClassVar[str]
    verb: ClassVar[str]

    async def apply(
        self, session: AsyncSession, run: BatchRun, items: list[WorkItem]
    ) -> list[Outcome]:
        operator = await load_operator(session, run.creator_id)
        ids = sorted({i.item_id for i in items})
        moved: set[int] = set()
        if operator is not None and session.get_bind().dialect.name == "postgresql":
            moved = await self._move_in_one_statement(session, run, operator, ids)
        rest = [i for i in ids if i not in moved]
        rows: dict[int, Any] = {}
        creator = await session.get(User, run.creator_id) if rest else None
        if rest and creator is not None:
            # An instance the creator cannot see is reported exactly like a missing one.
            visible = (true() if creator.is_admin else instance_visibility_clause(creator)).label(
                "visible"
            )
            rows = {
                r.id: r
                for r in await session.execute(
                    select(
                        ProcessInstance.id,
                        ProcessInstance.definition_key,
                        ProcessInstance.status,
                        visible,
                    )
                    .where(id_in(session, ProcessInstance.id, rest))
                    .order_by(ProcessInstance.id)
                    .with_for_update()
                )
            }
        outcomes: list[Outcome] = []
        to_move: list[int] = []
        done: set[int] = set()
        for item in items:
            if item.item_id in done:
                outcomes.append(Outcome("ignored", f"Process {item.item_id} is listed twice."))
                continue
            done.add(item.item_id)
            if item.item_id in moved:
                outcomes.append(Outcome("success"))
                continue
            outcome = self._decide(operator, item.item_id, rows.get(item.item_id))
            if outcome.status == "success":
                to_move.append(item.item_id)
            outcomes.append(outcome)
        await self._move_loaded(session, run, to_move)
        return outcomes

    def _decide(self, operator: Operator | None, item_id: int, row: Any) -> Outcome:
        """Why an item did (not) move — or ``success`` if it may move now."""
        if row is None or not row.visible:
            return Outcome("failed", f"Process {item_id} does not exist.", "not_found")
        if operator is None or not operator.may_operate(row.definition_key):
            return Outcome(
                "failed", f"You may not {self.verb} processes of {row.definition_key}.", "forbidden"
            )
        if row.status == self.to_state:
            return Outcome("ignored", f"Process {row.id} is already {self.to_state}.")
        if row.status not in self.sources:
            return Outcome(
                "failed",
                f"Process {row.id} is {row.status}; only "
                f"{' or '.join(self.sources)} processes can be {self.to_state}.",
                "conflict",
            )
        return Outcome("success")

    async def bulk_sql(self, session: AsyncSession, run: BatchRun) -> BulkSql | None:
        """Fused with the executor's claim: claim, move, log and record in one statement."""
        operator = await load_operator(session, run.creator_id)
        if operator is None:
            return None
        ctes, params = self._move_sql(run, operator, "ARRAY(SELECT item_id FROM claimed)")
        return BulkSql(ctes, params)

    def _move_sql(
        self, run: BatchRun, operator: Operator, targets: str
    ) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {
            "sources": list(self.sources),
            "to_state": self.to_state,
            "now": utcnow(),
            "actor": run.creator_id,
            "batch": run.batch_id,
            "action": self.type,
        }
        permission = ""
        if not operator.is_admin:
            permission = "AND definition_key = ANY(CAST(:granted AS VARCHAR[]))"
            params["granted"] = sorted(operator.keys)
        return _MOVE.format(targets=targets, permission=permission), params

    async def _move_in_one_statement(
        self, session: AsyncSession, run: BatchRun, operator: Operator, ids: list[int]
    ) -> set[int]:
        ctes, params = self._move_sql(run, operator, "CAST(:ids AS BIGINT[])")
        stmt = text(f"WITH {ctes} SELECT id FROM applied")
        return set(await session.scalars(stmt, {**params, "ids": ids}))

    async def _move_loaded(self, session: AsyncSession, run: BatchRun, ids: list[int]) -> None:
        """Move rows already loaded and locked (SQLite, or PostgreSQL stragglers)."""
        if not ids:
            return
        await session.execute(
            update(ProcessInstance)
            .where(id_in(session, ProcessInstance.id, ids))
            .values(status=self.to_state, updated_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        await write_process_logs(
            session,
            (
                {
                    "instance_id": iid,
                    "actor_id": run.creator_id,
                    "batch_id": run.batch_id,
                    "action": self.type,
                }
                for iid in ids
            ),
        )


class SuspendInstances(InstanceTransition):
    type = "instance.suspend"
    sources = ("active",)
    to_state = "suspended"
    verb = "suspend"


class ResumeInstances(InstanceTransition):
    type = "instance.resume"
    sources = ("suspended",)
    to_state = "active"
    verb = "resume"


register(SuspendInstances())
register(ResumeInstances())
