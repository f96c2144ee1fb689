"""A verified token's identity → a batchd user: found by (issuer, ``sub``), created on
first sight, and its role, department and name taken from the token's claims every
time, so a change at the provider (a role taken away) applies at the next request —
committed on their own, and never overwritten by the claims of an older token.

Only ever called with claims ``oidc.OidcProvider.verify`` accepted: a refused token
provisions nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.session import transaction
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


def issued_at(claims: dict[str, Any]) -> int | None:
    """The token's ``iat`` in whole seconds, or None when it has none (PyJWT has
    already refused one that is not a number or lies in the future)."""
    value = claims.get("iat")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


async def apply_claims(
    sm: async_sessionmaker[AsyncSession], issuer: str, claims: dict[str, Any], settings: Settings
) -> int:
    """The id of the user of (``issuer``, ``sub``), created if new, with role,
    department and name brought up to date from ``claims`` — in a transaction of its
    own, committed before the request does anything else. Why: the request may then be
    refused (a demoted admin's ``POST /users`` is a 403) and its own transaction rolled
    back, which must not put the old role back.

    Claims of a token older than the newest one applied (its ``iat``) are ignored: an
    admin token issued before a demotion still authenticates until it expires, but no
    longer makes its user admin again. A token without ``iat`` counts as older than any
    token that had one. A new user gets no usable ``bd_`` token: the stored hash is of a
    random secret nobody is given.

    Run it before the request's own session has touched the database: on SQLite every
    transaction holds the write lock, so a request transaction already open would make
    this one wait for it."""
    async with transaction(sm) as session:
        return await _apply(session, issuer, claims, settings)


async def _apply(
    session: AsyncSession, issuer: str, claims: dict[str, Any], settings: Settings
) -> int:
    subject = str(claims["sub"])
    role, department, name = (
        role_of(claims, settings),
        department_of(claims, settings),
        name_of(claims, settings),
    )
    iat = issued_at(claims)
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
                    oidc_claims_iat=iat,
                )
                session.add(user)
        except IntegrityError:
            user = await _find(session, issuer, subject)
            if user is None:  # pragma: no cover - the unique pair was just violated
                raise
        else:
            return user.id
    stored = user.oidc_claims_iat
    if stored is not None and (iat is None or iat < stored):
        return user.id  # an older token: it authenticates, its claims change nothing
    changed = (user.role, user.department_id, user.name) != (role, department, name)
    if not changed and (iat is None or iat == stored):
        return user.id
    newest_or_equal = (
        User.oidc_claims_iat.is_(None)
        if iat is None
        else or_(User.oidc_claims_iat.is_(None), User.oidc_claims_iat <= iat)
    )
    # Conditional, so two tokens applied at once can only move forward in time.
    await session.execute(
        update(User)
        .where(User.id == user.id, newest_or_equal)
        .values(role=role, department_id=department, name=name, oidc_claims_iat=iat)
        .execution_options(synchronize_session=False)
    )
    return user.id


async def _find(session: AsyncSession, issuer: str, subject: str) -> User | None:
    return await session.scalar(
        select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
    )
