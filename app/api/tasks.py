"""/api/v1/tasks: list and read tasks, approve or reject one task."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.openapi.models import Example

from app.api.deps import CurrentUser, PageDep, SessionDep, SettingsDep
from app.errors import ValidationFailed
from app.schemas.common import IdPath, Page, error_responses, parse_id
from app.schemas.engine import (
    ApproveRequest,
    ApproveResult,
    InstanceOut,
    TaskListItem,
    TaskOut,
)
from app.schemas.filters import TASK_FILTERS
from app.workflow import approval
from app.workflow.instances import reload_step
from app.workflow.queries import TaskRow, get_task_row, list_tasks, task_list

router = APIRouter(prefix="/api/v1", tags=["tasks"])


APPROVE_EXAMPLES: dict[str, Example] = {
    "approve": {
        "summary": "Approve, filling a field writable at this step",
        "value": {
            "decision": "approve",
            "comment": "Looks fine",
            "form_data": {"category": "travel"},
        },
    },
    "reject": {
        "summary": "Reject (the instance becomes rejected)",
        "value": {"decision": "reject", "comment": "Receipt missing"},
    },
    "reassign": {
        "summary": "Approve and pick the next step's assignee",
        "value": {"decision": "approve", "next_assignee_id": 3},
    },
}


def parse_ids(raw: str, limit: int) -> list[int]:
    """``"11, 12,13"`` → ``[11, 12, 13]``; anything else is a 422 on ``ids``."""
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        task_id = parse_id(part)
        if task_id is None:
            raise ValidationFailed(
                f"ids must be comma-separated positive integers, got '{part}'.",
                fields=[{"loc": ["query", "ids"], "msg": f"'{part}' is not a task id"}],
            )
        ids.append(task_id)
    if len(ids) > limit:
        raise ValidationFailed(
            f"ids may list at most {limit} tasks.",
            fields=[{"loc": ["query", "ids"], "msg": f"at most {limit} ids"}],
        )
    return ids


def _item(row: TaskRow) -> TaskListItem:
    return TaskListItem(
        **TaskOut.model_validate(row.task).model_dump(),
        title=row.title,
        business_key=row.business_key,
        definition_key=row.definition_key,
        department_id=row.department_id,
        instance_status=row.instance_status,
        form_data=row.form_data,
    )


@router.get(
    "/tasks",
    operation_id="list_tasks",
    summary="List tasks",
    response_model=Page[TaskListItem],
    responses=error_responses(401, 422),
)
async def list_(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    filters: Annotated[dict[str, Any], Depends(TASK_FILTERS.query_dependency())],
    page: PageDep,
) -> Page[TaskListItem]:
    """Tasks, newest first, with their instance's title, key and department.

    A user sees only tasks assigned to them (an ``assignee_id`` of somebody else
    gives an empty page, not a 403); an admin sees every task.
    """
    if "ids" in filters:
        filters["ids"] = parse_ids(filters["ids"], settings.max_page_size)
    tasks = task_list(user, **filters)
    rows, total = await list_tasks(session, tasks, offset=page.offset, limit=page.page_size)
    return Page[TaskListItem](
        items=[_item(r) for r in rows],
        total=total.n,
        total_exact=total.exact,
        page=page.page,
        page_size=page.page_size,
    )


@router.get(
    "/tasks/{task_id}",
    operation_id="get_task",
    summary="Get a task",
    response_model=TaskListItem,
    responses=error_responses(401, 404, 422),
)
async def get(task_id: IdPath, user: CurrentUser, session: SessionDep) -> TaskListItem:
    """One task (404 unless it is the caller's or the caller is an admin)."""
    return _item(await get_task_row(session, user, task_id))


@router.post(
    "/tasks/{task_id}/approve",
    operation_id="approve_task",
    summary="Approve or reject one task",
    response_model=ApproveResult,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def approve(
    task_id: IdPath,
    body: Annotated[ApproveRequest, Body(openapi_examples=APPROVE_EXAMPLES)],
    user: CurrentUser,
    session: SessionDep,
) -> ApproveResult:
    """Approve or reject one task as its assignee.

    Returns ``{"task", "instance"}``: the completed task and the instance after the
    step (its new ``status`` and ``current_node_id``). 409 while the instance is not
    active, the task is not pending, or a batch holds the task's lock.
    """
    task = await approval.approve_one(
        session,
        user,
        task_id,
        decision=body.decision,
        comment=body.comment,
        form_data=body.form_data,
        next_assignee_id=body.next_assignee_id,
    )
    task, instance = await reload_step(session, task)
    return ApproveResult(
        task=TaskOut.model_validate(task), instance=InstanceOut.model_validate(instance)
    )
