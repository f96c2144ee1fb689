"""``instance.set_variables``: merge ``variables`` into each instance's variables
(top-level keys replaced, others kept), with the same limits as form data (≤ 200 keys,
text ≤ 10 000 characters, finite numbers; at least one key).

Only active or suspended instances take variables; one that already holds every given
value is ``ignored``. On PostgreSQL the merge is one statement per chunk
(``variables || :patch``), fused with the executor's claim; the items it did not change
go through the shared path, which says why (or merges them in Python and writes them
with one bulk statement — the same result on SQLite).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

from pydantic import Field
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import update_rows
from app.engine.approval import Outcome
from app.engine.permissions import Operator, load_operator
from app.models import ProcessInstance
from app.operations.instance_base import ENDED, SUCCESS, InstanceOperation, failed, ignored
from app.operations.registry import BatchRun, BulkSql, register
from app.schemas.common import FormBag, StrictModel

MAX_KEYS_IN_LOG = 10


class VariablesParams(StrictModel):
    variables: Annotated[FormBag, Field(min_length=1)]


_MERGE = """
applied AS (
    UPDATE process_instances
    SET variables = variables || CAST(:patch AS JSONB), updated_at = CAST(:now AS TIMESTAMPTZ)
    WHERE id = ANY({targets}) AND status IN ('active', 'suspended')
      AND NOT (variables @> CAST(:patch AS JSONB))
    {permission}
    RETURNING id
), logged AS (
    INSERT INTO process_logs (instance_id, actor_id, batch_id, action, message, created_at)
    SELECT id, CAST(:actor AS BIGINT), CAST(:batch AS BIGINT), CAST(:action AS VARCHAR),
           CAST(:message AS TEXT), CAST(:now AS TIMESTAMPTZ)
    FROM applied
)"""


class SetVariables(InstanceOperation):
    type = "instance.set_variables"
    Params = VariablesParams
    verb = "set variables of"
    columns = (ProcessInstance.variables,)

    def decide(self, run: BatchRun, row: Any, prepared: Any) -> Outcome:
        if row.status in ENDED:
            return failed(
                f"Process {row.id} is {row.status}; variables can only be set on "
                "active or suspended processes."
            )
        current = row.variables or {}
        wanted: dict[str, Any] = run.params["variables"]
        if all(k in current and current[k] == v for k, v in wanted.items()):
            return ignored(f"Process {row.id} already has these variables.")
        return SUCCESS

    async def write(
        self, session: AsyncSession, run: BatchRun, rows: list[Any], prepared: Any
    ) -> None:
        wanted: dict[str, Any] = run.params["variables"]
        await update_rows(
            session,
            cast(Table, ProcessInstance.__table__),
            [{"id": r.id, "variables": {**(r.variables or {}), **wanted}} for r in rows],
            constants={"updated_at": utcnow()},
        )
        await self.log(session, run, [r.id for r in rows], _message(wanted))

    async def fast_path(
        self, session: AsyncSession, run: BatchRun, operator: Operator, ids: list[int]
    ) -> set[int]:
        if session.get_bind().dialect.name != "postgresql":
            return set()
        ctes, params = self._merge_sql(run, operator, "CAST(:ids AS BIGINT[])")
        stmt = text(f"WITH {ctes} SELECT id FROM applied")
        return set(await session.scalars(stmt, {**params, "ids": ids}))

    async def bulk_sql(self, session: AsyncSession, run: BatchRun) -> BulkSql | None:
        operator = await load_operator(session, run.creator_id)
        if operator is None:
            return None
        ctes, params = self._merge_sql(run, operator, "ARRAY(SELECT item_id FROM claimed)")
        return BulkSql(ctes, params)

    def _merge_sql(
        self, run: BatchRun, operator: Operator, targets: str
    ) -> tuple[str, dict[str, Any]]:
        wanted: dict[str, Any] = run.params["variables"]
        params: dict[str, Any] = {
            "patch": json.dumps(wanted),
            "now": utcnow(),
            "actor": run.creator_id,
            "batch": run.batch_id,
            "action": self.type,
            "message": _message(wanted),
        }
        permission = ""
        if not operator.is_admin:
            permission = "AND definition_key = ANY(CAST(:granted AS VARCHAR[]))"
            params["granted"] = sorted(operator.keys)
        return _MERGE.format(targets=targets, permission=permission), params


def _message(variables: dict[str, Any]) -> str:
    names = sorted(variables)
    more = len(names) - MAX_KEYS_IN_LOG
    shown = ", ".join(names[:MAX_KEYS_IN_LOG]) + (f" and {more} more" if more > 0 else "")
    return f"set {shown}"


register(SetVariables())
