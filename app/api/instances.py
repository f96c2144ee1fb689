"""/api/v1/instances: start an instance, list visible instances, read one with its
tasks and logs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.openapi.models import Example

from app.api.deps import CurrentUser, PageDep, SessionDep
from app.schemas.common import IdPath, Page, error_responses
from app.schemas.engine import (
    InstanceCreate,
    InstanceDetail,
    InstanceOut,
    ProcessLogOut,
    TaskOut,
)
from app.schemas.filters import INSTANCE_FILTERS
from app.workflow import instances as service
from app.workflow.queries import instance_filter_clauses, list_instances

router = APIRouter(prefix="/api/v1", tags=["instances"])

START_EXAMPLES: dict[str, Example] = {
    "expense": {
        "summary": "Start an expense claim",
        "value": {
            "definition_key": "expense",
            "title": "Trip to Lisbon (09 Apr)",
            "business_key": "EXP-2026-0042",
            "form_data": {"amount": 420.5, "category": "travel"},
        },
    },
    "minimal": {
        "summary": "Only what is required",
        "value": {"definition_key": "leave", "title": "Leave 12-16 May"},
    },
}


def _detail(detail: service.InstanceDetail) -> InstanceDetail:
    return InstanceDetail(
        **InstanceOut.model_validate(detail.instance).model_dump(),
        tasks=[TaskOut.model_validate(t) for t in detail.tasks],
        logs=[ProcessLogOut.model_validate(log) for log in detail.logs],
    )


@router.post(
    "/instances",
    operation_id="start_instance",
    summary="Start an instance",
    status_code=201,
    response_model=InstanceDetail,
    responses=error_responses(401, 422),
)
async def start(
    body: Annotated[InstanceCreate, Body(openapi_examples=START_EXAMPLES)],
    user: CurrentUser,
    session: SessionDep,
) -> InstanceDetail:
    """Start an instance on the latest version of the definition; the caller is the
    initiator. The response includes the first task (``tasks``) and the start log.
    An unknown ``definition_key`` is a 422 on that field."""
    instance = await service.start_instance(
        session,
        user,
        definition_key=body.definition_key,
        title=body.title,
        department_id=body.department_id,
        business_key=body.business_key,
        form_data=body.form_data,
    )
    return _detail(await service.instance_detail(session, user, instance.id))


@router.get(
    "/instances",
    operation_id="list_instances",
    summary="List visible instances",
    response_model=Page[InstanceOut],
    responses=error_responses(401, 422),
)
async def list_(
    user: CurrentUser,
    session: SessionDep,
    filters: Annotated[dict[str, Any], Depends(INSTANCE_FILTERS.query_dependency())],
    page: PageDep,
) -> Page[InstanceOut]:
    """Visible instances, newest first: a user's own, those they hold a task in, and
    those of definitions they have a monitor grant for; an admin sees all. The filters
    are the same as an instance batch's ``filter`` (one declaration, one translation to
    SQL), so a list shows exactly what a filter batch would select."""
    clauses = instance_filter_clauses(user, **filters)
    rows, total = await list_instances(session, clauses, offset=page.offset, limit=page.page_size)
    return Page[InstanceOut](
        items=[InstanceOut.model_validate(i) for i in rows],
        total=total.n,
        total_exact=total.exact,
        page=page.page,
        page_size=page.page_size,
    )


@router.get(
    "/instances/{instance_id}",
    operation_id="get_instance",
    summary="Get an instance with its tasks and logs",
    response_model=InstanceDetail,
    responses=error_responses(401, 404, 422),
)
async def get(instance_id: IdPath, user: CurrentUser, session: SessionDep) -> InstanceDetail:
    """One instance with its tasks and process logs; 404 if it is not visible."""
    return _detail(await service.instance_detail(session, user, instance_id))
