"""Users, bearer tokens (stored as SHA-256, shown once) and monitor grants."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import MonitorGrant, User

ROLES = ("admin", "user")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "bd_" + secrets.token_urlsafe(24)


async def create_user(
    session: AsyncSession, name: str, *, role: str = "user", department_id: int | None = None
) -> tuple[User, str]:
    """Create a user and return it with its plain token (the only time it is visible)."""
    token = new_token()
    user = User(name=name, role=role, department_id=department_id, token_hash=hash_token(token))
    session.add(user)
    await session.flush()
    return user, token


async def user_by_token(session: AsyncSession, token: str) -> User | None:
    return await session.scalar(select(User).where(User.token_hash == hash_token(token)))


async def get_user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} does not exist.")
    return user


async def grant_monitor(session: AsyncSession, user_id: int, definition_key: str) -> MonitorGrant:
    """Idempotent: granting twice returns the existing grant."""
    await get_user(session, user_id)
    grant = await session.scalar(
        select(MonitorGrant).where(
            MonitorGrant.user_id == user_id, MonitorGrant.definition_key == definition_key
        )
    )
    if grant is None:
        grant = MonitorGrant(user_id=user_id, definition_key=definition_key)
        session.add(grant)
        await session.flush()
    return grant


async def granted_keys(session: AsyncSession, user_id: int) -> set[str]:
    rows = await session.scalars(
        select(MonitorGrant.definition_key).where(MonitorGrant.user_id == user_id)
    )
    return set(rows)
