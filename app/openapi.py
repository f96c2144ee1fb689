"""An OpenAPI document that tells the truth.

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

Every operation also gets a readable, stable ``operationId`` (``create_batch``, not
FastAPI's ``create_batch_api_v1_batches_post``), so a generated client has method names
a person would choose and that do not change when a path does. A route names itself
with ``operation_id=`` on its decorator; ``OPERATION_IDS`` names the few whose module
this one may not touch. ``unnamed_operations`` lists any route with neither, and
``tests/test_openapi.py`` fails on it: a new route cannot slip in with a generated id.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import get_admin, get_current_user
from app.schemas.common import ID_MAX, ErrorBody

SCHEMA_REF = "#/components/schemas/"
ERROR_REF = {"$ref": f"{SCHEMA_REF}ErrorBody"}
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
    503: (
        "The database (or Redis, where the request needs it) is unreachable; retry after "
        "the Retry-After header's seconds."
    ),
    422: (
        "Invalid input: a parameter or body field (text over 10 000 characters, a "
        "number that is not finite, more than 200 form keys, …); ``fields`` says where."
    ),
}
BEARER = "bearerAuth"

log = logging.getLogger("batchd")

TAGS: list[dict[str, str]] = [
    {"name": "batches", "description": "Bulk operations: create, watch, retry, pause, cancel."},
    {"name": "tasks", "description": "Approval tasks: list, read, approve or reject one."},
    {"name": "instances", "description": "Process instances: start, list, read."},
    {"name": "definitions", "description": "Process definitions (versioned by key)."},
    {"name": "nodes", "description": "How each form field appears at a node (V2 view)."},
    {"name": "archives", "description": "Snapshots of deleted instances (admin)."},
    {
        "name": "excel",
        "description": "Approval templates, filled templates imported as batches, error files.",
    },
    {
        "name": "webhooks",
        "description": "Signed notifications of batch events: subscriptions and their deliveries.",
    },
    {"name": "users", "description": "The caller, users and monitor grants."},
    {"name": "health", "description": "Liveness and readiness probes (no auth)."},
    {"name": "monitoring", "description": "Prometheus metrics (no auth)."},
]
"""``openapi_tags`` of the app: one tag per resource, in the order the docs show them."""

OPERATION_IDS: dict[tuple[str, str], str] = {
    ("get", "/api/v1/batches/{batch_id}/events"): "get_batch_events",
}
"""``(method, path) → operationId`` for routes declared where an ``operation_id=`` cannot
be added (app/api/events.py). A route's own ``operation_id`` wins."""
OPERATION_SUMMARIES: dict[tuple[str, str], str] = {
    ("get", "/api/v1/batches/{batch_id}/events"): "Live progress (server-sent events)",
}
"""``(method, path) → summary`` for the same routes (FastAPI would say "Batch Events")."""

OPERATION_ID = re.compile(r"^[a-z]+(_[a-z0-9]+)*$")
"""snake_case verb_noun (``list_batch_details``); a one-word probe (``health``) passes."""


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
            routes = routes_of(routers)
            cache["document"] = truthful(copy.deepcopy(source), routes)
            for problem in unnamed_operations(cache["document"], routes):
                log.warning("OpenAPI: %s", problem)
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
    _name_operations(document, routes)
    _exact_integers(document)
    _event_streams(document)
    _restore_examples(schemas)
    _request_defaults(document)
    _binary_downloads(document)
    document.setdefault("servers", [{"url": "/", "description": "this batchd"}])
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


EVENT_STREAM_SCHEMA = {
    "type": "string",
    "description": (
        "text/event-stream: `progress` events (data: the batch object, id: its progress "
        "sequence), `: ping` comments every 15 s, and a final `end` event."
    ),
}


def _event_streams(document: dict[str, Any]) -> None:
    """FastAPI describes a server-sent event stream with ``itemSchema``, an OpenAPI 3.2
    keyword that 3.1 tools (Redocly, Spectral, openapi-typescript) reject: say it is a
    text stream instead, and what its events hold."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                stream = response.get("content", {}).get("text/event-stream")
                if stream is not None and "itemSchema" in stream:
                    del stream["itemSchema"]
                    stream["schema"] = dict(EVENT_STREAM_SCHEMA)


BINARY_SCHEMA = {"type": "string", "format": "binary"}


def _binary_downloads(document: dict[str, Any]) -> None:
    """A download declared with a bare media type (``application/zip: {}``) gets the
    binary schema the error file already has, so a client generator hands back bytes
    instead of nothing."""
    for _path, _method, operation in _operations(document):
        for response in operation["responses"].values():
            for media, content in response.get("content", {}).items():
                textual = media.startswith("text/") or media.endswith("json")
                if not textual and isinstance(content, dict) and not content.get("schema"):
                    content["schema"] = dict(BINARY_SCHEMA)


def _request_defaults(document: dict[str, Any]) -> None:
    """openapi-typescript (7.x, default options) types a property with a ``default`` as
    always present, reading every component schema as a response; only inline request
    bodies are exempt, and batchd's are components. So a minimal ``BatchCreate`` failed
    to compile without ``priority``, ``start_suspended`` and ``dry_run``. In components
    that only requests use, the default moves into the description: still documented,
    and the generated request type leaves the property optional, as the server does."""
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    requests: set[str] = set()
    responses: set[str] = set()
    for _path, _method, operation in _operations(document):
        _referenced(operation.get("requestBody"), schemas, requests)
        _referenced(operation.get("parameters"), schemas, requests)
        _referenced(operation.get("responses"), schemas, responses)
    for name in sorted(requests - responses):
        for prop in schemas[name].get("properties", {}).values():
            if isinstance(prop, dict) and "default" in prop:
                said = f"Default: `{json.dumps(prop.pop('default'))}`."
                prop["description"] = f"{prop.get('description', '').rstrip()} {said}".strip()


def _referenced(node: Any, schemas: dict[str, Any], names: set[str]) -> None:
    """Add to ``names`` every component schema ``node`` refers to, directly or not."""
    if isinstance(node, list):
        for item in node:
            _referenced(item, schemas, names)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(SCHEMA_REF):
        name = ref.removeprefix(SCHEMA_REF)
        if name not in names and name in schemas:
            names.add(name)
            _referenced(schemas[name], schemas, names)
    for value in node.values():
        if isinstance(value, (dict, list)):
            _referenced(value, schemas, names)


def _restore_examples(schemas: dict[str, Any]) -> None:
    """FastAPI writes the document with ``exclude_none``, which also strips the ``null``
    fields out of a model's examples (``finished_at: null``), so the examples no longer
    match their own schemas. Put back each model's examples as pydantic wrote them."""
    from pydantic import BaseModel

    from app.schemas import batch, common, engine

    models = {
        name: model
        for module in (batch, common, engine)
        for name, model in vars(module).items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    for name, schema in schemas.items():
        if "examples" in schema and name in models:
            schema["examples"] = models[name].model_json_schema()["examples"]


def _exact_integers(node: Any) -> None:
    """Every integer schema as a generated client needs it: ``format: int64`` and exact
    bounds. FastAPI's OpenAPI models hold nested bounds as floats, so ``le=2**63 - 1``
    inside ``anyOf`` or ``items`` came out as ``9.223372036854776e+18`` (2**63: one past
    what a BIGINT holds)."""
    if isinstance(node, list):
        for item in node:
            _exact_integers(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "integer":
        node.setdefault("format", "int64")
        for bound in ("minimum", "maximum"):
            value = node.get(bound)
            if isinstance(value, float):
                node[bound] = max(-ID_MAX, min(ID_MAX, int(value)))
    for value in node.values():
        if isinstance(value, (dict, list)):
            _exact_integers(value)


def _name_operations(document: dict[str, Any], routes: list[APIRoute]) -> None:
    """Apply ``OPERATION_IDS`` to routes that did not name themselves."""
    named = {
        (method.lower(), route.path_format)
        for route in routes
        if route.operation_id is not None
        for method in route.methods or ()
    }
    for path, method, operation in _operations(document):
        fallback = OPERATION_IDS.get((method, path))
        if fallback and (method, path) not in named:
            operation["operationId"] = fallback
        if (method, path) in OPERATION_SUMMARIES:
            operation["summary"] = OPERATION_SUMMARIES[(method, path)]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield path, method, operation


def routes_of(routers: Iterable[APIRouter]) -> list[APIRoute]:
    """The API routes of ``routers`` (paths include each router's prefix)."""
    return [r for router in routers for r in router.routes if isinstance(r, APIRoute)]


def unnamed_operations(document: dict[str, Any], routes: Iterable[APIRoute]) -> list[str]:
    """What keeps ``document`` from giving a generated client readable, stable method
    names: a documented route with neither ``operation_id=`` nor an ``OPERATION_IDS``
    entry, an operationId that is neither of those (FastAPI's generated
    ``list_api_v1_tasks_get``), one that is not snake_case, or one used twice — each as
    ``"GET /path: why"``. Empty when all is well; the OpenAPI test asserts exactly that."""
    problems: list[str] = []
    explicit = set(OPERATION_IDS.values())
    for route in routes:
        if not route.include_in_schema:
            continue
        if route.operation_id is not None:
            explicit.add(route.operation_id)
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            if (method.lower(), route.path_format) not in OPERATION_IDS:
                problems.append(f"{method} {route.path_format}: no operation_id")
    seen: dict[str, str] = {}
    for path, method, operation in _operations(document):
        where = f"{method.upper()} {path}"
        op_id = operation.get("operationId", "")
        if op_id not in explicit:
            problems.append(f"{where}: operationId {op_id!r} was generated, not chosen")
        elif not OPERATION_ID.match(op_id):
            problems.append(f"{where}: operationId {op_id!r} is not snake_case")
        if op_id in seen:
            problems.append(f"{where}: operationId {op_id!r} also names {seen[op_id]}")
        seen.setdefault(op_id, where)
    return problems


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
    else:
        operation["security"] = []  # public (probes, metrics): said, not left out
    if get_admin in calls:
        statuses.add(403)
    if path.startswith("/api/"):
        statuses.add(503)
    for status in sorted(statuses):
        if status >= 500 and str(status) in responses:
            continue  # the route's own (``/ready``'s 503 says which check failed)
        responses[str(status)] = {
            "description": DESCRIPTIONS.get(status, "Error."),
            "content": {"application/json": {"schema": ERROR_REF}},
        }
    operation["responses"] = dict(sorted(responses.items()))


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)
