"""Users, their bearer tokens and browser sessions, and monitor grants.

Every secret (a token, a session's cookie secret, its CSRF token) is shown once and
stored only as its SHA-256, so a copy of the database lets nobody in.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db.base import utcnow
from app.errors import Forbidden, NotFound
from app.models import BrowserSession, MonitorGrant, User
from app.workflow.logs import write_action_log

ROLES = ("admin", "user")

SESSION_TOUCH_SECONDS = 60.0
"""A session's ``last_seen_at`` is written at most this often (not on every request), so
the idle deadline is exact to within this much."""


def hash_token(secret: str) -> str:
    """The stored form of any secret: SHA-256 hex (secrets are random, so no salt)."""
    return hashlib.sha256(secret.encode()).hexdigest()


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


SSO_NO_TOKEN = (
    "{who} through the single sign-on provider, so batchd makes no bd_ token for {whom}: "
    "sign in with the provider (its tokens work on the API and the CLI)."
)


def refuse_local_token(user: User, *, own: bool) -> None:
    """A single-sign-on user gets no ``bd_`` token (``Forbidden``): a permanent token
    would keep the role it had when made, whatever the provider says later (demoted,
    disabled). Users made with a ``bd_`` token (service users) are unaffected."""
    if user.oidc_issuer is not None:
        who = "You sign in" if own else f"User {user.id} signs in"
        raise Forbidden(SSO_NO_TOKEN.format(who=who, whom="you" if own else "them"))


async def rotate_token(session: AsyncSession, user: User, *, actor_id: int | None) -> str:
    """Give ``user`` a new token and return it (the only time it is visible). The old
    token and every browser session of the user stop working when this commits; the
    action log records who did it (``actor_id`` None: the server's own CLI)."""
    token = new_token()
    user.token_hash = hash_token(token)
    ended = await end_browser_sessions(session, user.id)
    await write_action_log(
        session,
        actor_id,
        "user.token_rotated",
        detail={"user_id": user.id, "sessions_ended": ended},
    )
    return token


async def start_browser_session(
    session: AsyncSession, user: User, settings: Settings, *, expires_at: datetime | None = None
) -> tuple[str, str]:
    """Open a session for ``user``: its cookie secret and CSRF token (stored hashed).
    ``expires_at`` ends it then at the latest (a single-sign-on session: the ID token's
    ``exp``, so the role it signed in with is not kept longer than the provider said).
    Sessions that have expired, anyone's, are deleted here, so the table holds only
    live ones without a sweeper of its own — except that one past its ``expires_at`` is
    kept (refused) for the idle timeout, so its browser can be signed in again without
    a click (``ended_by_provider``)."""
    now = utcnow()
    idle_since = now - timedelta(seconds=settings.session_idle_timeout)
    await session.execute(
        delete(BrowserSession).where(
            or_(
                BrowserSession.last_seen_at < idle_since,
                BrowserSession.created_at < now - timedelta(seconds=settings.session_max_age),
                BrowserSession.expires_at <= idle_since,
            )
        )
    )
    secret, csrf = "bs_" + secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        BrowserSession(
            user_id=user.id,
            secret_hash=hash_token(secret),
            csrf_hash=hash_token(csrf),
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
        )
    )
    await session.flush()
    return secret, csrf


async def browser_session_user(
    session: AsyncSession, secret: str, settings: Settings
) -> tuple[BrowserSession, User] | None:
    """The live session whose cookie secret this is, with its user; None if there is
    none (never was, signed out, token rotated) or it has expired, idle
    (``session_idle_timeout``), old (``session_max_age``) or past its own ``expires_at``
    (a single-sign-on session whose ID token expired: sign in again). Using it moves the
    idle deadline."""
    row = (
        await session.execute(
            select(BrowserSession, User)
            .join(User, User.id == BrowserSession.user_id)
            .where(BrowserSession.secret_hash == hash_token(secret))
        )
    ).first()
    if row is None:
        return None
    browser, user = row.tuple()
    now = utcnow()
    idle = now - browser.last_seen_at
    if idle > timedelta(seconds=settings.session_idle_timeout):
        return None
    if now - browser.created_at > timedelta(seconds=settings.session_max_age):
        return None
    if browser.expires_at is not None and now >= browser.expires_at:
        return None
    touch = min(SESSION_TOUCH_SECONDS, settings.session_idle_timeout / 10)
    if idle > timedelta(seconds=touch):
        browser.last_seen_at = now
        await session.flush()
    return browser, user


async def ended_by_provider(session: AsyncSession, secret: str, settings: Settings) -> bool:
    """Whether this cookie secret names a single-sign-on session that ended only because
    its ID token expired (not signed out, not idle, not too old): the console may then
    ask the provider to renew it silently."""
    browser = await session.scalar(
        select(BrowserSession).where(BrowserSession.secret_hash == hash_token(secret))
    )
    if browser is None or browser.expires_at is None:
        return False
    now = utcnow()
    return (
        now >= browser.expires_at
        and now - browser.last_seen_at <= timedelta(seconds=settings.session_idle_timeout)
        and now - browser.created_at <= timedelta(seconds=settings.session_max_age)
    )


async def end_browser_session(session: AsyncSession, secret: str) -> None:
    """Sign out: the session of this cookie secret is refused from now on."""
    await session.execute(
        delete(BrowserSession).where(BrowserSession.secret_hash == hash_token(secret))
    )


async def end_browser_sessions(session: AsyncSession, user_id: int) -> int:
    """End every browser session of a user; how many there were."""
    result = await session.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id))
    return int(getattr(result, "rowcount", 0) or 0)


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
