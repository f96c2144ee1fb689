"""/api/v1/archives: snapshots taken before instances were deleted (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.api.deps import AdminUser, PageDep, SessionDep
from app.schemas.common import IdPath, Page, error_responses
from app.schemas.engine import ArchiveDetail, ArchiveSummary
from app.schemas.filters import ARCHIVE_FILTERS
from app.workflow.archives import get_archive, list_archives
from app.workflow.queries import filter_clauses

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
    filters: Annotated[dict[str, Any], Depends(ARCHIVE_FILTERS.query_dependency())],
    page: PageDep,
) -> Page[ArchiveSummary]:
    """Archived (deleted) instances, newest first; snapshots are in the detail."""
    rows, total = await list_archives(
        session, filter_clauses(ARCHIVE_FILTERS, filters), offset=page.offset, limit=page.page_size
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
