"""/api/v1/session: sign a browser in with a bearer token (HttpOnly cookie), and out.

Why: a browser's ``EventSource`` cannot send an ``Authorization`` header, and the
console must never put a token in a URL. The cookie holds a random session secret, not
the token: the server keeps the session (``sessions``, the secret's hash only), so
signing out, an expired session or a rotated token ends it there, and a copied cookie
is refused. ``SameSite=Strict`` keeps other sites from sending it, and state-changing
requests made with it need the session's CSRF token (``deps.cookie_user``). Signing in
is refused from another origin, so a foreign page cannot sign a user into someone
else's account either.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import Field

from app.api.deps import CSRF_COOKIE, SESSION_COOKIE, SessionDep, SettingsDep
from app.api.oidc import sign_out_cookies
from app.auth.console_flow import HINT_COOKIE
from app.errors import Forbidden, Unauthorized
from app.schemas.common import StrictModel, error_responses
from app.schemas.engine import UserOut
from app.workflow.users import end_browser_session, start_browser_session, user_by_token

router = APIRouter(prefix="/api/v1", tags=["users"])


class SignIn(StrictModel):
    token: str = Field(min_length=1, max_length=200)


class SessionOut(UserOut):
    csrf_token: str = Field(description=f"Send it as the X-CSRF-Token header ({CSRF_COOKIE}).")


@router.post(
    "/session",
    operation_id="sign_in",
    summary="Sign a browser in (session cookie)",
    response_model=SessionOut,
    responses=error_responses(400, 401, 403, 413, 422),
)
async def sign_in(
    body: SignIn,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> SessionOut:
    """Check the token, open a server-side session and set the ``batchd_session``
    (HttpOnly: the session's secret) and ``batchd_csrf`` cookies; the answer carries the
    CSRF token too. A session this browser already had is ended, and so is the ID token
    hint of a single-sign-on session it replaces (signing out of this one must not send
    the browser to the provider's sign-out)."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.url.netloc:
        raise Forbidden("Sign in from the service's own pages.")
    user = await user_by_token(session, body.token.strip())
    if user is None:
        raise Unauthorized("The bearer token is not valid.")
    previous = request.cookies.get(SESSION_COOKIE, "").strip()
    if previous:
        await end_browser_session(session, previous)
    secret, csrf = await start_browser_session(session, user, settings)
    secure = request.url.scheme == "https"
    for name, value, http_only in ((SESSION_COOKIE, secret, True), (CSRF_COOKIE, csrf, False)):
        response.set_cookie(
            name, value, httponly=http_only, samesite="strict", secure=secure, path="/"
        )
    if request.cookies.get(HINT_COOKIE):
        response.delete_cookie(HINT_COOKIE, path="/api/v1/session", samesite="strict")
    return SessionOut(
        id=user.id,
        name=user.name,
        role=user.role,
        department_id=user.department_id,
        csrf_token=csrf,
    )


@router.delete(
    "/session",
    operation_id="sign_out",
    summary="Sign a browser out",
    status_code=204,
    response_class=Response,
)
async def sign_out(request: Request, session: SessionDep) -> Response:
    """End this browser's session on the server (its cookie is refused from now on)
    and clear the cookies. Always 204: signing out twice, or without a session, is no
    error, and ending a session needs no CSRF token (it only ever takes access away).
    A session opened with the provider also has the sign-in page the console opens next
    send the browser to the provider's sign-out (docs/single-sign-on.md)."""
    secret = request.cookies.get(SESSION_COOKIE, "").strip()
    if secret:
        await end_browser_session(session, secret)
    response = Response(status_code=204)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict")
    sign_out_cookies(request, response)  # a provider session: its sign-out comes next
    return response
