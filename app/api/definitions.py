"""/api/v1/definitions: create (admin; a known key makes version+1), list, read."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminUser, CurrentUser, PageDep, SessionDep
from app.schemas.common import IdPath, KeyQuery, Page, error_responses
from app.schemas.engine import DefinitionCreate, DefinitionOut
from app.workflow import definitions as service

router = APIRouter(prefix="/api/v1", tags=["definitions"])


@router.post(
    "/definitions",
    operation_id="create_definition",
    summary="Create a definition, or a new version of its key (admin)",
    status_code=201,
    response_model=DefinitionOut,
    responses=error_responses(401, 403, 409, 422),
)
async def create(body: DefinitionCreate, _admin: AdminUser, session: SessionDep) -> DefinitionOut:
    """Every problem of the definition is reported at once, each at its location; posting
    a key that exists makes its next version."""
    definition = await service.create_definition(session, body)
    return DefinitionOut.model_validate(definition)


@router.get(
    "/definitions",
    operation_id="list_definitions",
    summary="List definitions",
    response_model=Page[DefinitionOut],
    responses=error_responses(401, 422),
)
async def list_(
    _user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    key: KeyQuery = None,
    all_versions: bool = False,
) -> Page[DefinitionOut]:
    """Latest version of each key (ordered by key); ``all_versions=true`` lists every
    version, newest first within a key."""
    rows, total = await service.list_definitions(
        session, key=key, all_versions=all_versions, offset=page.offset, limit=page.page_size
    )
    return Page[DefinitionOut](
        items=[DefinitionOut.model_validate(d) for d in rows],
        total=total,
        page=page.page,
        page_size=page.page_size,
    )


@router.get(
    "/definitions/{definition_id}",
    operation_id="get_definition",
    summary="Get a definition",
    response_model=DefinitionOut,
    responses=error_responses(401, 404, 422),
)
async def get(definition_id: IdPath, _user: CurrentUser, session: SessionDep) -> DefinitionOut:
    """One version of a definition: its form fields and its nodes in order."""
    return DefinitionOut.model_validate(await service.get_definition(session, definition_id))
