"""/api/v1/archives: snapshots taken before instances were deleted (admin only)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminUser, PageDep, SessionDep
from app.schemas.common import IdPath, KeyQuery, Page, error_responses
from app.schemas.engine import ArchiveDetail, ArchiveSummary
from app.workflow.archives import get_archive, list_archives

router = APIRouter(prefix="/api/v1", tags=["archives"])


@router.get(
    "/archives",
    operation_id="list_archives",
    summary="List archived instances (admin)",
    response_model=Page[ArchiveSummary],
    responses=error_responses(401, 403, 422),
)
async def list_(
    _admin: AdminUser,
    session: SessionDep,
    page: PageDep,
    definition_key: KeyQuery = None,
) -> Page[ArchiveSummary]:
    """Archived (deleted) instances, newest first; snapshots are in the detail."""
    rows, total = await list_archives(
        session, definition_key=definition_key, offset=page.offset, limit=page.page_size
    )
    return Page[ArchiveSummary](
        items=[ArchiveSummary.model_validate(a) for a in rows],
        total=total,
        page=page.page,
        page_size=page.page_size,
    )


@router.get(
    "/archives/{instance_id}",
    operation_id="get_archive",
    summary="Get the snapshot of a deleted instance (admin)",
    response_model=ArchiveDetail,
    responses=error_responses(401, 403, 404, 422),
)
async def get(instance_id: IdPath, _admin: AdminUser, session: SessionDep) -> ArchiveDetail:
    """The snapshot of a deleted instance (instance, tasks and logs as they were);
    404 when that instance id was never archived."""
    return ArchiveDetail.model_validate(await get_archive(session, instance_id))
