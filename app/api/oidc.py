"""The console's single sign-on: ``/api/v1/session/oidc/start`` sends the browser to the
provider (authorization code + PKCE), ``/api/v1/session/oidc/callback`` (the redirect URI
to register at the provider) checks what comes back and opens the same server-side
browser session a token sign-in opens. Both are browser navigations, not API calls, so
they answer with redirects — every failure lands on the sign-in page with a fixed
sentence (``console_flow.MESSAGES``), never a 500 and never the provider's own text —
and they stay out of the OpenAPI document.

Why the last hop is the sign-in page: the session cookies are ``SameSite=Strict``, and
a browser does not send them on a navigation that a redirect from another site started;
the sign-in page (same site) moves on to the console with a script navigation, which
does send them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import CSRF_COOKIE, SESSION_COOKIE, SessionDep, SettingsDep
from app.auth.console_flow import (
    CALLBACK_PATH,
    FLOW_COOKIE,
    FLOW_MAX_AGE_S,
    HINT_COOKIE,
    MESSAGES,
    Flow,
    FlowError,
    authorization_url,
    check_state,
    end_session_url,
    redeem,
)
from app.auth.identities import apply_claims
from app.auth.oidc import DISCOVERY_MAX_AGE_S, ProviderDown, provider_of
from app.config import Settings
from app.models import User
from app.workflow.users import end_browser_session, ended_by_provider, start_browser_session

log = logging.getLogger("batchd.auth")

router = APIRouter(prefix="/api/v1/session/oidc", include_in_schema=False)

FLOW_PATH = "/api/v1/session/oidc"
LOGOUT_COOKIE = "batchd_oidc_logout"
"""Set by sign-out for an SSO session and read once by the sign-in page the console
goes to next, which then sends the browser on to the provider's sign-out."""


def sso_enabled(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def redirect_uri(request: Request) -> str:
    """``{public base}/api/v1/session/oidc/callback``: the base is the URL the request
    came in on (run uvicorn with ``--proxy-headers`` behind a proxy)."""
    return base_url(request) + CALLBACK_PATH


def local_path(value: str | None) -> str:
    """Only a path on this site may follow sign-in (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/tasks"
    parts = urlsplit(value)
    return "/tasks" if parts.scheme or parts.netloc else value


def to_sign_in(next_path: str, **query: str) -> RedirectResponse:
    response = RedirectResponse(
        "/sign-in?" + urlencode({**query, "next": next_path}), status_code=303
    )
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


@router.get("/start")
async def start(
    request: Request, settings: SettingsDep, next: str | None = None, silent: bool = False
) -> Response:
    """Send the browser to the provider's authorization endpoint (``silent``: with
    ``prompt=none``, to renew a session whose ID token expired — see ``renew``).
    Discovery is re-read when the copy is older than a minute (at most one read a minute
    however many browsers — or anonymous callers — come here), so a provider that went
    down is said on the sign-in page rather than in the browser's own error page."""
    target = local_path(next)
    provider = provider_of(request.app.state, settings)
    if provider is None or not settings.oidc_client_id:
        return to_sign_in(target, sso_error="off")
    try:
        metadata = await provider.discover(max_age=DISCOVERY_MAX_AGE_S)
        flow = Flow.new(target, silent=silent)
        location = authorization_url(metadata, settings, flow, redirect_uri(request))
    except ProviderDown:
        log.warning("single sign-on start: the provider cannot be reached")
        return to_sign_in(target, sso_error="provider")
    response = RedirectResponse(location, status_code=303)
    response.set_cookie(
        FLOW_COOKIE,
        flow.cookie(),
        max_age=FLOW_MAX_AGE_S,
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",  # it must come back on the provider's redirect to the callback
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/callback")
async def callback(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    iss: str | None = None,
) -> Response:
    """Finish the sign-in: the state must be this browser's, the code is redeemed with
    the PKCE verifier, the ID token verified (signature, iss, aud = the client id,
    expiry, nonce); then the user is found or created by (issuer, sub) — its claims
    committed on their own, like a bearer JWT's — and a browser session opened that
    ends when the ID token expires (sign in again then: the role it holds is the one
    the provider said at sign-in)."""
    flow = Flow.from_cookie(request.cookies.get(FLOW_COOKIE, ""))
    target = flow.next if flow else "/tasks"
    provider = provider_of(request.app.state, settings)
    if provider is None or not settings.oidc_client_id:
        return to_sign_in(target, sso_error="off")
    try:
        checked = check_state(flow, state)
        if iss is not None and iss != provider.issuer:  # RFC 9207: a mix-up of providers
            raise FlowError("token", "the authorization response names another issuer")
        if error:
            raise FlowError("denied", f"provider error {error[:100]!r}")
        if not code:
            raise FlowError("token", "no code")
        claims, id_token = await redeem(
            provider, settings, checked, code[:4096], redirect_uri(request)
        )
    except FlowError as exc:
        log.info("single sign-on callback refused: %s", exc.reason)
        if flow is None or not flow.silent:
            return to_sign_in(target, sso_error=exc.code)
        # A renewal the provider refused (its own session is over, or it wants the user
        # to see something): the expired session goes for good, so the sign-in page
        # does not try again, and the user signs in as usual.
        response = to_sign_in(target, sso_error="expired" if exc.code == "denied" else exc.code)
        previous = request.cookies.get(SESSION_COOKIE, "").strip()
        if previous:
            await end_browser_session(session, previous)
        response.delete_cookie(SESSION_COOKIE, path="/", samesite="strict")
        return response
    user_id = await apply_claims(request.app.state.sessionmaker, provider.issuer, claims, settings)
    user = await session.get(User, user_id, populate_existing=True)
    if user is None:  # pragma: no cover - deleted between the two transactions
        return to_sign_in(target, sso_error="token")
    previous = request.cookies.get(SESSION_COOKIE, "").strip()
    if previous:
        await end_browser_session(session, previous)
    expires = datetime.fromtimestamp(int(claims["exp"]), UTC)  # verify required exp
    secret, csrf = await start_browser_session(session, user, settings, expires_at=expires)
    response = to_sign_in(target, sso="done")
    secure = request.url.scheme == "https"
    for name, value, http_only in ((SESSION_COOKIE, secret, True), (CSRF_COOKIE, csrf, False)):
        response.set_cookie(
            name, value, httponly=http_only, samesite="strict", secure=secure, path="/"
        )
    response.set_cookie(
        HINT_COOKIE,
        id_token,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/api/v1/session",
        max_age=int(settings.session_max_age),
    )
    return response


def sign_out_cookies(request: Request, response: Response) -> None:
    """For ``DELETE /api/v1/session``: if this browser signed in with the provider, hand
    its ID token to the sign-in page the console opens next (one minute, that page only),
    which sends the browser on to the provider's sign-out."""
    hint = request.cookies.get(HINT_COOKIE, "")
    if not hint:
        return
    response.delete_cookie(HINT_COOKIE, path="/api/v1/session", samesite="strict")
    settings: Settings = request.app.state.settings
    if sso_enabled(settings):
        response.set_cookie(
            LOGOUT_COOKIE,
            hint,
            max_age=60,
            path="/sign-in",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


async def provider_sign_out(request: Request) -> Response | None:
    """For the sign-in page: right after an SSO session signed out, a redirect to the
    provider's ``end_session_endpoint`` (``id_token_hint``, back to the sign-in page);
    None otherwise (no such cookie, or the provider has no end-session endpoint or
    cannot be reached — the batchd session has ended either way)."""
    hint = request.cookies.get(LOGOUT_COOKIE, "")
    if not hint:
        return None
    settings: Settings = request.app.state.settings
    provider = provider_of(request.app.state, settings)
    location = None
    if provider is not None:
        try:
            metadata = await provider.discover()
        except ProviderDown:
            metadata = None
        location = end_session_url(metadata, settings, hint, base_url(request) + "/sign-in")
    response: Response = (
        RedirectResponse(location, status_code=303)
        if location
        else RedirectResponse("/sign-in", status_code=303)
    )
    response.delete_cookie(LOGOUT_COOKIE, path="/sign-in", samesite="strict")
    return response


async def renew(request: Request, session: AsyncSession, next_path: str) -> Response | None:
    """For the sign-in page: a browser whose single-sign-on session ended only because
    its ID token expired is sent through the provider again without a click
    (``prompt=none``): while the user's session at the provider lives, they are signed
    in again with the role the provider says now; otherwise the callback drops the old
    session and the sign-in page asks as usual. None when there is nothing to renew."""
    settings: Settings = request.app.state.settings
    secret = request.cookies.get(SESSION_COOKIE, "").strip()
    if not secret or not sso_enabled(settings):
        return None
    if not await ended_by_provider(session, secret, settings):
        return None
    query = urlencode({"next": next_path, "silent": "true"})
    return RedirectResponse(f"{FLOW_PATH}/start?{query}", status_code=303)


def sign_in_context(
    request: Request, sso: str | None, sso_error: str | None, next_path: str
) -> dict[str, Any]:
    """What the sign-in page shows about single sign-on: the button (when a client id
    is configured), a fixed sentence for a failed attempt, and whether an attempt just
    succeeded (the page then moves on by itself)."""
    settings: Settings = request.app.state.settings
    enabled = sso_enabled(settings)
    provider = (
        (settings.oidc_display_name or "").strip()
        or urlsplit(settings.oidc_issuer or "").hostname
        or "single sign-on"
    )
    return {
        "sso_start": f"{FLOW_PATH}/start?next={quote(next_path, safe='/')}" if enabled else None,
        "sso_label": f"Sign in with {provider}",
        "sso_error": MESSAGES.get(sso_error or "") if sso_error else None,
        "sso_done": sso == "done",
    }
