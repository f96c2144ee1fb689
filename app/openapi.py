"""An OpenAPI document that tells the truth (DESIGN.md §4).

FastAPI documents its own 422 body (``HTTPValidationError``, a ``detail`` array), but
every 4xx batchd sends is ``ErrorBody`` (``{"error", "detail", "fields"?}``), and it
lists only the statuses a route declares. Here the generated document is rewritten so
that each operation lists every status it can really answer, each with ``ErrorBody``:

- 400 / 413 / 422 wherever a request body is accepted (not UTF-8 JSON; over
  ``BATCH_MAX_BODY_BYTES``; invalid);
- 401 where a bearer token is needed, 403 where an admin is;
- 404 where a path names a resource; 422 where any parameter can be invalid;
- plus whatever the route declares itself (404, 409, …).

FastAPI's ``HTTPValidationError`` / ``ValidationError`` components are dropped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import get_admin, get_current_user
from app.schemas.common import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
DESCRIPTIONS = {
    400: "The request body is not UTF-8 encoded JSON.",
    401: "No bearer token, or one that is not valid.",
    403: "The caller may not do this.",
    404: "Not found, or not visible to the caller.",
    405: "Method not allowed.",
    409: "The resource is in a state that does not allow this.",
    413: (
        "The request body is larger than BATCH_MAX_BODY_BYTES "
        "(BATCH_MAX_UPLOAD_BYTES for multipart uploads); refused before it is parsed."
    ),
    415: "Unsupported media type.",
    422: (
        "Invalid input: a parameter or body field (text over 10 000 characters, a "
        "number that is not finite, more than 200 form keys, …); ``fields`` says where."
    ),
}
BEARER = "bearerAuth"


def install_openapi(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Replace ``app.openapi`` with one that post-processes FastAPI's document (rebuilt
    whenever FastAPI rebuilds its own, e.g. after routes are added). ``routers`` are
    the ones the app mounts (their routes carry the dependencies that say who may
    call them)."""
    routers = list(routers)
    generate: Callable[[], dict[str, Any]] = app.openapi
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        source = generate()
        if cache.get("source") is not source:
            cache["source"] = source
            routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
            cache["document"] = truthful(copy.deepcopy(source), routes)
        document: dict[str, Any] = cache["document"]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def truthful(document: dict[str, Any], routes: list[APIRoute]) -> dict[str, Any]:
    """Document every error status of every operation with ``ErrorBody``."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault(
        "ErrorBody",
        ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"),
    )
    schemas.update(
        {
            name: schema
            for name, schema in ErrorBody.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            .get("$defs", {})
            .items()
            if name not in schemas
        }
    )
    schemas["ErrorBody"].pop("$defs", None)
    for name in FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /api/v1/users or `batchd create-user`.",
    }

    calls: dict[tuple[str, str], set[Any]] = {}
    for route in routes:
        for method in route.methods or ():
            key = (route.path_format, method.lower())
            calls[key] = {dep.call for dep in _dependencies(route.dependant)}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "responses" in operation:
                _document_errors(path, operation, calls.get((path, method), set()))
    return document


def _document_errors(path: str, operation: dict[str, Any], calls: set[Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    statuses = {int(code) for code in responses if code.isdigit() and int(code) >= 400}
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if operation.get("parameters"):
        statuses.add(422)
    if "{" in path:
        statuses |= {404, 422}
    if path.startswith("/api/") or get_current_user in calls or 401 in statuses:
        statuses.add(401)
        operation["security"] = [{BEARER: []}]
    if get_admin in calls:
        statuses.add(403)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": DESCRIPTIONS.get(status, "Error."),
            "content": {"application/json": {"schema": ERROR_REF}},
        }
    operation["responses"] = dict(sorted(responses.items()))


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)
