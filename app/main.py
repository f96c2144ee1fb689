"""create_app(): lifespan (engine, migrations on the embedded default, the job runtime
with the batch feature's job table), routers and the one error handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.limits import BodyLimitMiddleware
from app.api.methods import MethodsMiddleware
from app.auth.oidc import check_settings as check_oidc_settings
from app.batches.jobs import job_table
from app.config import Settings, get_settings
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker
from app.errors import MAX_LISTED_ERRORS, AppError, Unavailable, is_unavailable, join_messages
from app.openapi import TAGS, install_openapi
from app.runtime.factory import build_runtime
from app.schemas.common import printable

log = logging.getLogger("batchd")

HTTP_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
}


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    """Build the API. ``run_jobs=False`` keeps an in-process runner from executing jobs
    (only used by tests that drive jobs by hand)."""
    settings = settings or get_settings()
    check_oidc_settings(settings)  # an issuer without an audience: refuse to start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url, pool_size=settings.db_pool_size, name="batchd-api"
        )
        if settings.is_sqlite:
            await upgrade_to_head(engine)
        sessionmaker = create_sessionmaker(engine)
        runtime = build_runtime(settings, sessionmaker, job_table(settings), run_jobs=run_jobs)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        app.state.queue = runtime.broker
        app.state.runner = runtime.runner  # None on Redis: `batchd worker` runs the jobs
        app.state.progress = runtime.progress
        app.state.jobs = runtime.ctx  # what jobs and crons of this process receive
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await engine.dispose()

    app = FastAPI(
        title="batchd",
        version="0.1.0",
        description="Batch operations for an approval workflow.",
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # served locally instead: app.web.api_docs
        redoc_url=None,
    )
    app.add_middleware(MethodsMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    _install_error_handlers(app)
    _include_routers(app)
    return app


def _include_routers(app: FastAPI) -> None:
    from app.api import routers
    from app.web import install_console
    from app.web.api_docs import install_api_docs

    for router in routers.ALL:
        app.include_router(router)
    install_openapi(app, routers.ALL)
    install_console(app)  # the web console at / (HTML, kept out of the OpenAPI document)
    install_api_docs(app)  # /docs and /redoc, every asset served locally


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        return app_error_response(exc)

    async def outage(request: Request, exc: Exception) -> JSONResponse:
        """A dependency that cannot be reached is a 503 the client may retry; any other
        error of these kinds goes on to the server's 500, as before."""
        if not is_unavailable(exc):
            raise exc
        log.warning("%s %s: 503, %r", request.method, request.url.path, exc)
        return app_error_response(Unavailable())

    for kind in _OUTAGE_KINDS:
        app.add_exception_handler(kind, outage)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_field_error(e) for e in errors[:MAX_LISTED_ERRORS]]
        malformed = any(e["type"] == "json_invalid" for e in errors)
        messages = [f"{'.'.join(map(str, f['loc']))}: {f['msg']}" for f in fields]
        messages += [""] * (len(errors) - len(fields))  # only counted: "and N more"
        detail = "The request body is not valid JSON." if malformed else join_messages(messages)
        return JSONResponse(
            {"error": "ValidationError", "detail": detail, "fields": fields}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "Error")
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "The request body could not be read: send UTF-8 encoded JSON."
        return JSONResponse(
            {"error": code, "detail": detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def app_error_response(exc: AppError) -> JSONResponse:
    """The JSON error body; a 503 also says when to try again."""
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def _outage_kinds() -> tuple[type[Exception], ...]:
    """The exception classes a lost dependency raises through a request (``is_unavailable``
    decides per instance): handlers are looked up by class, and a handler for plain
    ``Exception`` would run outside the routing layer, after the server logged a 500."""
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    kinds: list[type[Exception]] = [SQLAlchemyError, RedisError, OSError]
    try:
        from asyncpg import exceptions as pg

        kinds += [pg.PostgresError, pg.InterfaceError]
    except ImportError:  # pragma: no cover - asyncpg is a dependency, but optional here
        pass
    return tuple(kinds)


_OUTAGE_KINDS = _outage_kinds()


def _field_error(err: Any) -> dict[str, Any]:
    """One field error; a location may quote the caller's own key, which may hold a
    lone surrogate that no JSON encoder would write."""
    loc = [p for p in err.get("loc", ()) if p != "body"] or list(err.get("loc", ()))
    loc = [printable(p) if isinstance(p, str) else p for p in loc]
    return {"loc": loc, "msg": printable(err.get("msg", "")), "type": err.get("type", "")}
