"""The console's page routes: thin Jinja2 shells (the browser fills them from the JSON
API) plus the static files they use, all kept out of the OpenAPI document.

Why shells instead of server-rendered data: every list, filter, preview and action is
already an API call with its own checks and error sentences; rendering the same data
again on the server would be a second place for visibility rules to drift. The server
only answers "who is this" (to redirect an unsigned visitor to sign-in, show the
right navigation, and give a 404 page for a batch the viewer may not see).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api import oidc
from app.api.deps import cookie_user
from app.batches import service
from app.errors import NotFound
from app.models import User
from app.schemas.common import parse_id
from app.schemas.filters import INSTANCE_FILTERS, TASK_FILTERS
from app.webhooks.events import WebhookEvent
from app.workflow.users import granted_keys

HERE = Path(__file__).parent
STATIC_URL = "/console/static"
STATIC_NAME = "console-static"
templates = Jinja2Templates(directory=HERE / "templates")

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # Pico CSS draws its check marks and select arrows as data: SVG images.
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
"""No inline script or style anywhere: every behaviour is in /console/static/*.js."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

TASKS_FORM: dict[str, Any] = {
    "filters": TASK_FILTERS.console_fields,
    "filter_defaults": {"status": "pending"},
}
"""The filter form of My tasks (``_filter_form.html``): it opens on what is left to
decide, and a cleared form comes back to it."""
INSTANCES_FORM: dict[str, Any] = {"filters": INSTANCE_FILTERS.console_fields, "filter_defaults": {}}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Viewer:
    """The signed-in user as the pages need them (navigation, admin-only columns)."""

    id: int
    name: str
    role: str
    department_id: int | None
    monitor_keys: list[str] = field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def may_operate(self) -> bool:
        """Instance operations: admins, or users with a monitor grant."""
        return self.is_admin or bool(self.monitor_keys)


async def current_viewer(request: Request) -> Viewer | None:
    """The user of the session cookie, or None (no cookie, or a session that has ended).
    Opening a page counts as activity for the session's idle deadline."""
    async with request.app.state.sessionmaker() as session:
        user = await cookie_user(request, session)
        if user is None:
            return None
        keys = sorted(await granted_keys(session, user.id))
        await session.commit()
        return Viewer(user.id, user.name, str(user.role), user.department_id, keys)


def safe_next(value: str | None) -> str:
    """Only a path on this site may follow sign-in (no open redirect to another host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/tasks"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/tasks"
    return value


def to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)


def page(
    request: Request,
    template: str,
    *,
    viewer: Viewer | None,
    title: str,
    script: str | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a page with the console's security headers (CSP without inline code)."""
    response = templates.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "title": title, "script": script, "static": STATIC_URL, **context},
        status_code=status_code,
    )
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/")
async def home(request: Request) -> Response:
    """The console's front door: tasks for a signed-in user, sign-in otherwise."""
    viewer = await current_viewer(request)
    return RedirectResponse("/tasks" if viewer else "/sign-in", status_code=303)


@router.get("/sign-in")
async def sign_in_page(
    request: Request,
    next: str | None = None,
    sso: str | None = None,
    sso_error: str | None = None,
) -> Response:
    viewer = await current_viewer(request)
    target = safe_next(next)
    if viewer is not None:
        return RedirectResponse(target, status_code=303)
    leaving = await oidc.provider_sign_out(request)  # just signed out of an SSO session
    if leaving is not None:
        return leaving
    if sso is None and sso_error is None:  # never right after a renewal came back
        async with request.app.state.sessionmaker() as session:
            renewal = await oidc.renew(request, session, target)
        if renewal is not None:
            return renewal
    return page(
        request,
        "sign_in.html",
        viewer=None,
        title="Sign in",
        script="sign_in.js",
        next=target,
        **oidc.sign_in_context(request, sso, sso_error, target),
    )


@router.get("/tasks")
async def tasks_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_sign_in(request)
    return page(
        request,
        "tasks.html",
        viewer=viewer,
        title="My tasks",
        script="tasks.js",
        **TASKS_FORM,
    )


@router.get("/batches")
async def batches_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_sign_in(request)
    title = "All batches" if viewer.is_admin else "My batches"
    return page(request, "batches.html", viewer=viewer, title=title, script="batches.js")


@router.get("/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str) -> Response:
    """A batch the viewer may not see gets the same 404 page as one that does not exist."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_sign_in(request)
    number = parse_id(batch_id)
    if number is None:
        return not_found(request, viewer, f"There is no batch {batch_id!r}.")
    async with request.app.state.sessionmaker() as session:
        user = await session.get(User, viewer.id)
        try:
            assert user is not None
            await service.get_batch(session, user, number)
        except NotFound as exc:
            return not_found(request, viewer, str(exc))
    return page(
        request,
        "batch.html",
        viewer=viewer,
        title=f"Batch {number}",
        script="batch.js",
        batch_id=number,
    )


@router.get("/webhooks")
async def webhooks_page(request: Request) -> Response:
    """The viewer's webhook subscriptions and their recent deliveries."""
    viewer = await current_viewer(request)
    if viewer is None:
        return to_sign_in(request)
    return page(
        request,
        "webhooks.html",
        viewer=viewer,
        title="Webhooks",
        script="webhooks.js",
        events=[e.value for e in WebhookEvent],
    )


@router.get("/instances")
async def instances_page(request: Request) -> Response:
    viewer = await current_viewer(request)
    if viewer is None:
        return to_sign_in(request)
    if not viewer.may_operate:
        return page(
            request,
            "message.html",
            viewer=viewer,
            title="Not allowed",
            status_code=403,
            heading="Instance operations are for operators",
            message=(
                "You need a monitor grant on a process definition (ask an admin) to "
                "run instance operations."
            ),
        )
    return page(
        request,
        "instances.html",
        viewer=viewer,
        title="Instances",
        script="instances.js",
        **INSTANCES_FORM,
    )


def not_found(request: Request, viewer: Viewer | None, message: str) -> HTMLResponse:
    return page(
        request,
        "message.html",
        viewer=viewer,
        title="Not found",
        status_code=404,
        heading="Not found",
        message=message,
    )


def install_console(app: FastAPI) -> None:
    """Mount the console on ``app``: its pages and ``/console/static``."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name=STATIC_NAME)
