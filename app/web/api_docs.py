"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served from this package.

FastAPI's own pages load both from a CDN and start them with inline script: blank with
no internet, and impossible under a strict Content-Security-Policy. Here the bundles
are vendored under ``/console/static/vendor`` (Swagger UI 5.36.0 and ReDoc 2.5.4 from
npm, with their licences) and started by a static script. Both libraries inject their
own ``<style>`` elements and ReDoc searches in a ``blob:`` worker, so their policy
allows inline styles and blob workers — still no inline or foreign script, no framing.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse

from app.web.router import SECURITY_HEADERS, STATIC_URL, templates

DOCS_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
DOCS_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": DOCS_CSP}

router = APIRouter(include_in_schema=False)


def _docs_page(request: Request, viewer: str) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        "api_docs.html",
        {
            "viewer": viewer,
            "static": STATIC_URL,
            "openapi_url": request.app.openapi_url,
            "title": request.app.title,
        },
    )
    response.headers.update(DOCS_HEADERS)
    return response


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _docs_page(request, "swagger")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _docs_page(request, "redoc")


def install_api_docs(app: FastAPI) -> None:
    """Mount ``/docs`` and ``/redoc``; create the app with ``docs_url=None`` and
    ``redoc_url=None`` so FastAPI's CDN pages are not mounted too."""
    app.include_router(router)
