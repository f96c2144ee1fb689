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
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import update_rows
from app.domain import BatchRun, Outcome
from app.models import ProcessInstance
from app.operations.instance_base import (
    ENDED,
    SUCCESS,
    InstanceOperation,
    PgUpdate,
    failed,
    ignored,
)
from app.operations.registry import register
from app.schemas.common import FormBag, StrictModel

MAX_KEYS_IN_LOG = 10


class VariablesParams(StrictModel):
    variables: Annotated[FormBag, Field(min_length=1)]


_MERGE = """
    UPDATE process_instances
    SET variables = variables || CAST(:patch AS JSONB), updated_at = CAST(:now AS TIMESTAMPTZ)
    WHERE id = ANY({targets}) AND status IN ('active', 'suspended')
      AND NOT (variables @> CAST(:patch AS JSONB))
    {permission}
    RETURNING id"""


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
        if all(k in current and _same(current[k], v) for k, v in wanted.items()):
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

    def pg_update(self, run: BatchRun) -> PgUpdate:
        wanted: dict[str, Any] = run.params["variables"]
        return PgUpdate(_MERGE, {"patch": json.dumps(wanted)}, _message(wanted))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``1``, ``1.0`` and ``true`` differ (Python's ``==`` says
    ``1 == True``), so both backends decide the same items."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _message(variables: dict[str, Any]) -> str:
    names = sorted(variables)
    more = len(names) - MAX_KEYS_IN_LOG
    shown = ", ".join(names[:MAX_KEYS_IN_LOG]) + (f" and {more} more" if more > 0 else "")
    return f"set {shown}"


register(SetVariables())
