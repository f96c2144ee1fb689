"""``instance.migrate``: move instances to another version of their definition, the
step they are at and their pending tasks following ``node_mapping``
(``{old node id: new node id}``; an unmapped node keeps its id).

The params are checked against the definition's versions when the batch is created
(the target version exists, every mapping value is one of its nodes, every mapping key
a node of some version), so a typo is a 422 and never a batch of failures. Each item is
then decided in Python — its definition, its state, whether every step it waits at
exists in the target version — because whether an instance can move depends on its
pending tasks, which a one-statement fast path could not explain when it refuses.

Per chunk, on both backends: one query for the definition versions involved, one for the
pending tasks of the chunk's instances, one bulk UPDATE for the instances, at most one
for the tasks, one INSERT for the process logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError
from sqlalchemy import Table, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import id_in, update_rows
from app.domain import BatchRun, ErrorCode, Outcome
from app.errors import ValidationFailed, join_messages
from app.models import ProcessDefinition, ProcessInstance, Task
from app.operations.instance_base import ENDED, SUCCESS, InstanceOperation, failed, ignored
from app.operations.registry import register
from app.schemas.common import StrictModel
from app.workflow.logs import write_process_logs

MAPPING_MAX = 200
VERSION_MAX = 2**31 - 1
"""``process_definitions.version`` is an INTEGER: a bigger number is a 422, not a driver error."""

NodeId = Annotated[str, Field(min_length=1, max_length=100)]


def _few_entries(value: Any) -> Any:
    """Refuse an oversized mapping before its entries are validated one by one, so a
    100 000-entry mapping gives one short error instead of thousands."""
    if isinstance(value, dict) and len(value) > MAPPING_MAX:
        raise PydanticCustomError(
            "too_many_entries",
            "may hold at most {limit} entries, got {count}",
            {"limit": MAPPING_MAX, "count": len(value)},
        )
    return value


class MigrateParams(StrictModel):
    definition_key: Annotated[str, Field(min_length=1, max_length=100)]
    target_version: Annotated[int, Field(ge=1, le=VERSION_MAX)]
    node_mapping: Annotated[
        dict[NodeId, NodeId],
        BeforeValidator(_few_entries),
        Field(
            description=(
                "Old node id → node id in the target version; an unmapped node keeps "
                f"its id. At most {MAPPING_MAX} entries."
            ),
            json_schema_extra={"maxProperties": MAPPING_MAX},
        ),
    ] = Field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a chunk needs besides its rows: the target version, the version each source
    definition id stands for (for the log sentence), and each instance's pending tasks."""

    target_id: int | None
    target_version: int
    target_nodes: frozenset[str]
    versions: dict[int, int]
    tasks: dict[int, list[tuple[int, str]]] = field(default_factory=dict)
    """instance id → [(task id, node id)] of its pending tasks."""


class MigrateInstances(InstanceOperation):
    type = "instance.migrate"
    Params = MigrateParams
    verb = "migrate"

    async def check_params(self, session: AsyncSession, params: dict[str, Any]) -> None:
        """One query over the definition's versions; every problem reported at once."""
        key: str = params["definition_key"]
        version: int = params["target_version"]
        mapping: dict[str, str] = params.get("node_mapping") or {}
        rows = (
            await session.execute(
                select(ProcessDefinition.version, ProcessDefinition.nodes).where(
                    ProcessDefinition.key == key
                )
            )
        ).all()
        nodes_by_version = {r.version: {n.get("id") for n in r.nodes or []} for r in rows}
        target = nodes_by_version.get(version)
        if target is None:
            raise ValidationFailed(
                f"Definition {key} has no version {version}.",
                fields=[{"loc": ["params", "target_version"], "msg": "no such version"}],
            )
        known = set().union(*nodes_by_version.values())
        errors: list[dict[str, Any]] = []
        messages: list[str] = []
        for old, new in mapping.items():
            if old not in known:
                errors.append(
                    {
                        "loc": ["params", "node_mapping", old],
                        "msg": f"'{old}' is not a node of {key}",
                    }
                )
                messages.append(f"{old} is not a step of any version of {key}")
            if new not in target:
                errors.append(
                    {
                        "loc": ["params", "node_mapping", old],
                        "msg": f"'{new}' is not a node of version {version}",
                    }
                )
                messages.append(f"{new} is not a step of version {version}")
        if errors:
            raise ValidationFailed(
                f"Invalid node_mapping for {key}: {join_messages(messages)}.", fields=errors
            )

    async def prepare(self, session: AsyncSession, run: BatchRun, rows: list[Any]) -> Plan | None:
        """The target and source versions with one query, the pending tasks of the
        instances that may move with another (row-locked: they are rewritten below)."""
        if not rows:
            return None
        key: str = run.params["definition_key"]
        version: int = run.params["target_version"]
        source_ids = sorted({r.definition_id for r in rows if r.definition_key == key})
        definitions = (
            await session.execute(
                select(
                    ProcessDefinition.id, ProcessDefinition.version, ProcessDefinition.nodes
                ).where(
                    ProcessDefinition.key == key,
                    or_(
                        ProcessDefinition.version == version,
                        id_in(session, ProcessDefinition.id, source_ids),
                    ),
                )
            )
        ).all()
        target = next((d for d in definitions if d.version == version), None)
        plan = Plan(
            target_id=target.id if target else None,
            target_version=version,
            target_nodes=frozenset(n.get("id") for n in (target.nodes if target else [])),
            versions={d.id: d.version for d in definitions},
        )
        movable = [
            r.id
            for r in rows
            if r.definition_key == key
            and r.status not in ENDED
            and r.definition_id != plan.target_id
        ]
        if movable and target is not None:
            query = (
                select(Task.id, Task.instance_id, Task.node_id)
                .where(id_in(session, Task.instance_id, movable), Task.status == "pending")
                .order_by(Task.id)
            )
            result = await session.execute(query if run.dry_run else query.with_for_update(of=Task))
            for task_id, instance_id, node_id in result:
                plan.tasks.setdefault(instance_id, []).append((task_id, node_id))
        return plan

    def decide(self, run: BatchRun, row: Any, prepared: Any) -> Outcome:
        plan = cast(Plan, prepared)
        key: str = run.params["definition_key"]
        if row.definition_key != key:
            return failed(
                f"Process {row.id} is a process of {row.definition_key}, not {key}.",
                ErrorCode.VALIDATION,
            )
        if row.status in ENDED:
            return failed(
                f"Process {row.id} is {row.status}; only active or suspended processes "
                "can be migrated."
            )
        if plan.target_id is None:  # created with it; only a purged definition gets here
            return failed(
                f"Definition {key} has no version {plan.target_version}.", ErrorCode.NOT_FOUND
            )
        if row.definition_id == plan.target_id:
            return ignored(f"Process {row.id} is already on version {plan.target_version}.")
        mapping: dict[str, str] = run.params.get("node_mapping") or {}
        steps = [row.current_node_id] if row.current_node_id is not None else []
        steps += [node for _, node in plan.tasks.get(row.id, [])]
        for step in steps:
            if mapping.get(step, step) not in plan.target_nodes:
                return failed(
                    f"Step {step} of process {row.id} does not exist in version "
                    f"{plan.target_version}; map it in node_mapping.",
                    ErrorCode.VALIDATION,
                )
        return SUCCESS

    async def write(
        self, session: AsyncSession, run: BatchRun, rows: list[Any], prepared: Any
    ) -> None:
        """One UPDATE for the instances, one for the tasks whose node changes, one INSERT
        for the logs (each naming the version the instance came from)."""
        plan = cast(Plan, prepared)
        mapping: dict[str, str] = run.params.get("node_mapping") or {}
        now = utcnow()
        await update_rows(
            session,
            cast(Table, ProcessInstance.__table__),
            [
                {
                    "id": r.id,
                    "current_node_id": (
                        None
                        if r.current_node_id is None
                        else mapping.get(r.current_node_id, r.current_node_id)
                    ),
                }
                for r in rows
            ],
            constants={"definition_id": plan.target_id, "updated_at": now},
        )
        await update_rows(
            session,
            cast(Table, Task.__table__),
            [
                {"id": task_id, "node_id": mapping[node]}
                for r in rows
                for task_id, node in plan.tasks.get(r.id, [])
                if mapping.get(node, node) != node
            ],
        )
        # Not ``self.log``: its one message fits all rows, but here the source version
        # differs per instance, and one INSERT should carry them all.
        await write_process_logs(
            session,
            (
                {
                    "instance_id": r.id,
                    "actor_id": run.creator_id,
                    "batch_id": run.batch_id,
                    "action": self.type,
                    "message": (
                        f"version {plan.versions.get(r.definition_id, '?')} → "
                        f"version {plan.target_version}"
                    ),
                }
                for r in rows
            ),
        )


register(MigrateInstances())
