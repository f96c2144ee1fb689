"""POST /api/v1/approval-templates: the caller's pending tasks at one node as an Excel
template to fill in and import (app/excel/template.py). The file is built whole before
the response starts, so a failure is an error response, never a truncated 200."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, model_validator

from app.api.deps import CurrentUser, SessionDep
from app.excel import template
from app.schemas.batch import TaskFilter
from app.schemas.common import Id, StrictModel, error_responses

# The "tasks" tag: an OpenAPI tag must be described in app.openapi.TAGS, which has no
# "excel" entry yet (tests/test_openapi.py::test_tags_are_described).
router = APIRouter(prefix="/api/v1", tags=["tasks"])

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ZIP = "application/zip"
SKIPPED_HEADER = "X-Batchd-Skipped"
TASKS_HEADER = "X-Batchd-Tasks"
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ApprovalTemplateRequest(StrictModel):
    """Which tasks the template holds: ``task_ids``, or ``filter``, or neither (all the
    caller's pending tasks at the node) — never both."""

    definition_key: str = Field(min_length=1, max_length=100, examples=["expense"])
    node_id: str = Field(min_length=1, max_length=100, examples=["manager"])
    filter: TaskFilter | None = Field(
        default=None, description="Narrows the caller's pending tasks at the node."
    )
    task_ids: list[Id] | None = Field(
        default=None,
        description=(
            f"At most {template.MAX_TASKS} ids (413 beyond; {template.ZIP_MAX_TASKS} for "
            f"zip). Ids that are not the caller's pending tasks at the node are left out "
            f"and counted in the {SKIPPED_HEADER} response header."
        ),
    )
    format: Literal["xlsx", "zip"] = Field(
        default="xlsx",
        description="xlsx: one sheet, a row per task; zip: a workbook per task.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApprovalTemplateRequest:
        if self.filter is not None and self.task_ids is not None:
            raise ValueError("send filter or task_ids, not both")
        return self


EXAMPLES: dict[str, Any] = {
    "all_pending": {
        "summary": "All my pending tasks at a node",
        "value": {"definition_key": "expense", "node_id": "manager", "format": "xlsx"},
    },
    "by_filter": {
        "summary": "Filtered, one workbook per task",
        "value": {
            "definition_key": "expense",
            "node_id": "manager",
            "filter": {"keyword": "Berlin"},
            "format": "zip",
        },
    },
    "by_ids": {
        "summary": "Listed tasks",
        "value": {"definition_key": "expense", "node_id": "manager", "task_ids": [11, 12]},
    },
}

_HEADERS_DOC = {
    "Content-Disposition": {
        "description": 'attachment; filename="approval-<definition>-<node>.xlsx|.zip"',
        "schema": {"type": "string"},
    },
    TASKS_HEADER: {"description": "Tasks in the file.", "schema": {"type": "integer"}},
    SKIPPED_HEADER: {
        "description": (
            "With task_ids: how many listed ids are not the caller's pending tasks at "
            "the node (left out)."
        ),
        "schema": {"type": "integer"},
    },
}


@router.post(
    "/approval-templates",
    operation_id="create_approval_template",
    summary="Download an Excel approval template",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The template (xlsx) or a zip of one workbook per task.",
            "content": {XLSX: {}, ZIP: {}},
            "headers": _HEADERS_DOC,
        },
        **error_responses(401, 404, 413, 422),
    },
)
async def create_approval_template(
    request: Request,
    body: Annotated[ApprovalTemplateRequest, Body(openapi_examples=EXAMPLES)],
    session: SessionDep,
    user: CurrentUser,
) -> StreamingResponse:
    """The caller's pending tasks at ``node_id`` of ``definition_key`` (in every
    version whose node has the latest version's columns), as a workbook whose columns
    follow that node's view (Task ID, Title, Department, read fields read-only, write
    fields with validations, Decision, Comment). 404 for an unknown definition or node;
    413 beyond the task limit; 422, saying why, when no task would be in it."""
    if body.task_ids is not None and len(body.task_ids) > template.limit_for(body.format):
        raise template.too_many(len(body.task_ids), body.format)
    source = await template.resolve(
        session,
        user,
        definition_key=body.definition_key,
        node_id=body.node_id,
        fmt=body.format,
        filter=body.filter.model_dump(exclude_none=True) if body.filter else None,
        task_ids=body.task_ids,
    )
    # Done with the request's own transaction (on SQLite it holds the write lock): the
    # build reads each page in a short transaction of its own.
    await session.commit()
    built = await template.build(request.app.state.sessionmaker, source, body.format)
    name = _UNSAFE_NAME.sub("_", f"approval-{source.definition_key}-{source.node_id}")
    headers = {
        **built.headers,
        "Content-Disposition": f'attachment; filename="{name}.{body.format}"',
        TASKS_HEADER: str(len(source.task_ids)),
    }
    if body.task_ids is not None:
        headers[SKIPPED_HEADER] = str(source.skipped)
    media_type = ZIP if body.format == "zip" else XLSX
    return StreamingResponse(built.chunks(), media_type=media_type, headers=headers)
