"""A verified token's identity → a batchd user: found by (issuer, ``sub``), created on
first sight, and its role, department and name taken from the token's claims every
time, so a change at the provider (a role taken away) applies at the next request.

Only ever called with claims ``oidc.OidcProvider.verify`` accepted: a refused token
provisions nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import User
from app.workflow.users import hash_token

NAME_MAX = 200


def role_of(claims: dict[str, Any], settings: Settings) -> str:
    """``admin`` only when the role claim says exactly that (a string, or a list of
    roles holding it); anything else, or no claim, is ``user``."""
    value = claims.get(settings.oidc_role_claim)
    if value == "admin" or (isinstance(value, list) and "admin" in value):
        return "admin"
    return "user"


def department_of(claims: dict[str, Any], settings: Settings) -> int | None:
    """An integer, or a string of digits; anything else is no department."""
    value = claims.get(settings.oidc_department_claim)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
        return number if -(2**63) <= number < 2**63 else None
    return None


def name_of(claims: dict[str, Any], settings: Settings) -> str:
    for key in (settings.oidc_name_claim, "preferred_username", "email"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:NAME_MAX]
    return str(claims["sub"])[:NAME_MAX]


async def user_for_claims(
    session: AsyncSession, issuer: str, claims: dict[str, Any], settings: Settings
) -> User:
    """The user of (``issuer``, ``sub``), created if new, with role, department and name
    brought up to date from ``claims``. A new user gets no usable ``bd_`` token: the
    stored hash is of a random secret nobody is given."""
    subject = str(claims["sub"])
    role, department, name = (
        role_of(claims, settings),
        department_of(claims, settings),
        name_of(claims, settings),
    )
    user = await _find(session, issuer, subject)
    if user is None:
        try:
            async with session.begin_nested():  # two first requests at once: one wins
                user = User(
                    name=name,
                    role=role,
                    department_id=department,
                    token_hash=hash_token("sso_" + secrets.token_urlsafe(32)),
                    oidc_issuer=issuer,
                    oidc_subject=subject,
                )
                session.add(user)
        except IntegrityError:
            user = await _find(session, issuer, subject)
            if user is None:  # pragma: no cover - the unique pair was just violated
                raise
        else:
            return user
    if (user.role, user.department_id, user.name) != (role, department, name):
        user.role, user.department_id, user.name = role, department, name
        await session.flush()
    return user


async def _find(session: AsyncSession, issuer: str, subject: str) -> User | None:
    return await session.scalar(
        select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
    )
