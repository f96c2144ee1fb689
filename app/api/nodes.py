"""/api/v1/nodes: the V2 view config of one node (how each form field appears there)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import CurrentUser, SessionDep
from app.schemas.common import ID_MAX, NO_NUL, error_responses
from app.schemas.engine import NodeView
from app.workflow.definitions import node_view

router = APIRouter(prefix="/api/v1", tags=["nodes"])


@router.get(
    "/nodes/{definition_key}/{node_id}/view",
    operation_id="get_node_view",
    summary="How each form field appears at a node",
    response_model=NodeView,
    responses=error_responses(401, 404, 422),
)
async def view(
    definition_key: Annotated[str, Path(max_length=100, pattern=NO_NUL)],
    node_id: Annotated[str, Path(max_length=100, pattern=NO_NUL)],
    _user: CurrentUser,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1, le=ID_MAX)] = None,
) -> NodeView:
    """Every field with visible / searchable / writable / required at this node, on the
    latest version of the definition (or ``?version=N``)."""
    return NodeView.model_validate(
        await node_view(session, definition_key, node_id, version=version)
    )
