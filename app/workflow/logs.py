"""Process logs (per instance) and action logs (per user operation), written in bulk."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.bulk import insert_rows
from app.models import ActionLog, ProcessLog


async def write_process_logs(session: AsyncSession, rows: Iterable[dict[str, Any]]) -> None:
    """Bulk insert; each row has instance_id, action and optionally task_id, actor_id,
    batch_id, message."""
    values = [
        {
            "instance_id": r["instance_id"],
            "task_id": r.get("task_id"),
            "actor_id": r.get("actor_id"),
            "batch_id": r.get("batch_id"),
            "action": r["action"],
            "message": r.get("message"),
        }
        for r in rows
    ]
    await insert_rows(
        session, cast(Table, ProcessLog.__table__), values, constants={"created_at": utcnow()}
    )


async def write_action_log(
    session: AsyncSession,
    user_id: int | None,
    action: str,
    *,
    batch_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(ActionLog(user_id=user_id, action=action, batch_id=batch_id, detail=detail or {}))
    await session.flush()
