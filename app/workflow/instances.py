"""Starting process instances and reading one with its tasks and logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.errors import ValidationFailed, join_messages
from app.models import ProcessDefinition, ProcessInstance, ProcessLog, Task, User
from app.workflow.definitions import latest_definition
from app.workflow.forms import FieldError, check_value
from app.workflow.logs import write_process_logs
from app.workflow.queries import get_visible_instance


@dataclass(frozen=True)
class InstanceDetail:
    instance: ProcessInstance
    tasks: list[Task]
    logs: list[ProcessLog]


def check_initial_form(
    definition: ProcessDefinition, form_data: dict[str, Any]
) -> tuple[dict[str, Any], list[FieldError]]:
    """Type- and option-check the initiator's form data against the form.

    The initiator fills in the form before any node runs, so node modes and node
    ``required`` lists do not apply here; they are enforced when tasks are approved.
    Values come back normalised (``"12"`` → ``12`` for a number).
    """
    specs = {f["name"]: f for f in definition.form}
    clean: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, value in form_data.items():
        spec = specs.get(name)
        if spec is None:
            errors.append(FieldError(name, f"{name} is not a field of this form"))
            continue
        ok, normalised, message = check_value(spec, value)
        if ok:
            clean[name] = normalised
        else:
            errors.append(FieldError(name, message))
    return clean, errors


async def start_instance(
    session: AsyncSession,
    user: User,
    *,
    definition_key: str,
    title: str,
    department_id: int | None = None,
    business_key: str | None = None,
    form_data: dict[str, Any] | None = None,
) -> ProcessInstance:
    """Start an instance on the latest version of ``definition_key``.

    The caller is the initiator; the department defaults to theirs. Creates the first
    node's task for that node's assignee and a ``started`` process log entry.
    """
    definition = await latest_definition(session, definition_key)
    if definition is None:
        raise ValidationFailed(
            f"Definition '{definition_key}' does not exist.",
            fields=[{"loc": ["definition_key"], "msg": "no definition has this key"}],
        )
    clean, errors = check_initial_form(definition, form_data or {})
    if errors:
        raise ValidationFailed(
            join_messages([e.message for e in errors]), fields=[e.as_dict() for e in errors]
        )
    first = definition.nodes[0]
    now = utcnow()
    instance = ProcessInstance(
        definition_id=definition.id,
        definition_key=definition.key,
        title=title,
        business_key=business_key,
        department_id=user.department_id if department_id is None else department_id,
        initiator_id=user.id,
        status="active",
        current_node_id=first["id"],
        form_data=clean,
        variables={},
        created_at=now,
        updated_at=now,
    )
    session.add(instance)
    await session.flush()
    task = Task(
        instance_id=instance.id,
        node_id=first["id"],
        assignee_id=first["assignee_id"],
        status="pending",
        created_at=now,
    )
    session.add(task)
    await session.flush()
    await write_process_logs(
        session,
        [
            {
                "instance_id": instance.id,
                "task_id": task.id,
                "actor_id": user.id,
                "action": "started",
                "message": (
                    f"{user.name} started '{title}' on {definition.key} v{definition.version}; "
                    f"first step {first.get('name') or first['id']}"
                ),
            }
        ],
    )
    return instance


async def instance_detail(session: AsyncSession, user: User, instance_id: int) -> InstanceDetail:
    """A visible instance with its tasks and process logs (oldest first); 404 otherwise."""
    instance = await get_visible_instance(session, user, instance_id)
    tasks = await session.scalars(
        select(Task).where(Task.instance_id == instance.id).order_by(Task.id)
    )
    logs = await session.scalars(
        select(ProcessLog).where(ProcessLog.instance_id == instance.id).order_by(ProcessLog.id)
    )
    return InstanceDetail(instance=instance, tasks=list(tasks), logs=list(logs))


async def reload_step(session: AsyncSession, task: Task) -> tuple[Task, ProcessInstance]:
    """The task and its instance as the database now has them.

    Approval may change rows with bulk statements that bypass the identity map, so flush
    pending ORM changes first, then re-read both rows over whatever the session holds.
    """
    await session.flush()
    fresh_task = await session.scalar(
        select(Task).where(Task.id == task.id).execution_options(populate_existing=True)
    )
    instance = await session.scalar(
        select(ProcessInstance)
        .where(ProcessInstance.id == task.instance_id)
        .execution_options(populate_existing=True)
    )
    assert fresh_task is not None and instance is not None  # same transaction, just written
    return fresh_task, instance
