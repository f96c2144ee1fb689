"""Reading the snapshots taken before instances were deleted.

The ``instance.delete`` operation writes ``instance_archives``; this module only reads
them, for admins (the router enforces the role). A snapshot is returned as stored, so
what an admin sees is exactly what was archived.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.pages import total_of
from app.errors import NotFound
from app.models import InstanceArchive

NEWEST_FIRST = (InstanceArchive.created_at.desc(), InstanceArchive.id.desc())
"""``id`` breaks ties between snapshots taken in the same instant (one batch chunk)."""


async def list_archives(
    session: AsyncSession,
    clauses: Sequence[ColumnElement[bool]],
    *,
    offset: int,
    limit: int,
) -> tuple[list[InstanceArchive], int]:
    """One page of the archives matching ``clauses``, newest first, and the total count."""
    stmt = select(InstanceArchive).where(*clauses)
    rows = await session.scalars(stmt.order_by(*NEWEST_FIRST).offset(offset).limit(limit))
    return list(rows), await total_of(session, stmt)


async def get_archive(session: AsyncSession, instance_id: int) -> InstanceArchive:
    """The newest snapshot of a deleted instance (an instance is archived once, but a
    re-run delete must not make the read ambiguous); 404 when there is none."""
    archive = await session.scalar(
        select(InstanceArchive)
        .where(InstanceArchive.instance_id == instance_id)
        .order_by(*NEWEST_FIRST)
        .limit(1)
    )
    if archive is None:
        raise NotFound(f"Instance {instance_id} has no archive.")
    return archive
