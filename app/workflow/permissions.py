"""Who may run instance operations: admins on everything, others on the definitions
they hold a monitor grant for."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import User
from app.workflow.users import granted_keys


@dataclass(frozen=True)
class Operator:
    user_id: int
    is_admin: bool
    keys: frozenset[str]

    def may_operate(self, definition_key: str) -> bool:
        return self.is_admin or definition_key in self.keys


async def load_operator(session: AsyncSession, user_id: int) -> Operator | None:
    """One or two queries per chunk, not per item."""
    role = await session.scalar(select(User.role).where(User.id == user_id))
    if role is None:
        return None
    keys = frozenset() if role == "admin" else frozenset(await granted_keys(session, user_id))
    return Operator(user_id, role == "admin", keys)
