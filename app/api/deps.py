"""Request dependencies: the request-scoped session (the HTTP commit boundary), the
current user from the bearer token or the session cookie, settings, pagination and the
queue backend."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.identities import apply_claims
from app.auth.oidc import INVALID, InvalidToken, api_audiences, looks_like_jwt, provider_of
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.errors import Forbidden, Unauthorized, ValidationFailed
from app.models import User
from app.runtime.backend import Broker
from app.schemas.common import PAGE_SIZE_MAX
from app.workflow.users import browser_session_user, hash_token, user_by_token

log = logging.getLogger("batchd.auth")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, committed before the response is sent (the dependency
    is function-scoped, so a failed commit becomes an error response, never a 2xx for
    unsaved work). Wake-ups requested during the request are sent after the commit."""
    async with unit_of_work(request.app.state.sessionmaker, request.app.state.queue) as session:
        yield session


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_queue(request: Request) -> Broker:
    queue: Broker = request.app.state.queue
    return queue


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
QueueDep = Annotated[Broker, Depends(get_queue)]


SESSION_COOKIE = "batchd_session"
CSRF_COOKIE = "batchd_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_current_user(request: Request, session: SessionDep) -> User:
    """The caller, from ``Authorization: Bearer <token>`` — or, for a browser (the
    console, an ``EventSource``), from the session cookie that ``POST /api/v1/session``
    set. A bearer header wins over the cookie."""
    header = request.headers.get("authorization", "")
    if not header:
        if not request.cookies.get(SESSION_COOKIE, "").strip():
            raise Unauthorized("Send 'Authorization: Bearer <token>' (or sign in).")
        user = await cookie_user(request, session)
        if user is None:
            raise Unauthorized("Your session has ended: sign in again.")
        return user
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send 'Authorization: Bearer <token>'.")
    token = token.strip()
    if looks_like_jwt(token):
        return await jwt_user(request, session, token)
    found = await user_by_token(session, token)
    if found is None:
        raise Unauthorized(INVALID)
    return found


async def jwt_user(request: Request, session: AsyncSession, token: str) -> User:
    """The user of a single-sign-on JWT: verified against the provider's keys first,
    then found or created by (issuer, ``sub``) with the role, department and name its
    claims give now — committed in a transaction of their own before the request's work
    (``identities.apply_claims``), so a request refused afterwards cannot undo a
    demotion. Without ``BATCH_OIDC_ISSUER`` a JWT is refused like any unknown token; a
    refused token provisions nothing."""
    settings: Settings = request.app.state.settings
    provider = provider_of(request.app.state, settings)
    if provider is None:
        raise Unauthorized(INVALID)
    try:
        claims = await provider.verify(token, audiences=api_audiences(settings))
    except InvalidToken as exc:
        log.info("bearer JWT refused: %s", exc.reason)
        raise
    user_id = await apply_claims(request.app.state.sessionmaker, provider.issuer, claims, settings)
    user = await session.get(User, user_id, populate_existing=True)
    if user is None:  # pragma: no cover - deleted between the two transactions
        raise Unauthorized(INVALID)
    return user


async def cookie_user(request: Request, session: AsyncSession) -> User | None:
    """The user of the browser session named by the ``batchd_session`` cookie, or None
    (no cookie; signed out, token rotated or expired). The one place a cookie becomes a
    user: the API and the console's pages both ask here. A cookie is sent by the browser
    on its own, so a state-changing request must also carry the session's CSRF token in
    the ``X-CSRF-Token`` header (the console reads it from the ``batchd_csrf`` cookie;
    the cookies are also ``SameSite=Strict``); the token is checked against the one
    stored with the session, so another session's token does not do."""
    secret = request.cookies.get(SESSION_COOKIE, "").strip()
    if not secret:
        return None
    found = await browser_session_user(session, secret, request.app.state.settings)
    if found is None:
        return None
    browser, user = found
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(hash_token(sent), browser.csrf_hash):
            raise Forbidden(f"Send the {CSRF_HEADER} header of your session.")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("Only an admin may do this.")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


class Page:
    """``?page=1&page_size=50``; page_size above 1000 (documented in the schema) or
    above ``BATCH_MAX_PAGE_SIZE`` (which may only lower it) is a 422."""

    def __init__(
        self,
        request: Request,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = 50,
    ) -> None:
        limit = request.app.state.settings.max_page_size
        if page_size > limit:
            raise ValidationFailed(
                f"page_size may be at most {limit}.",
                fields=[{"loc": ["query", "page_size"], "msg": f"must be ≤ {limit}"}],
            )
        self.page = page
        self.page_size = page_size

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


PageDep = Annotated[Page, Depends(Page)]
