"""The OpenAPI document tells the truth: every 4xx it lists is the
``ErrorBody`` the API really sends, every operation lists the statuses it really
answers, limits are in the schema, and schemathesis — driving every operation but the
SSE stream against a live server with demo data and an admin token — finds no
server error, no undocumented status, no wrong content type and no response that
breaks its schema."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.demo import seed_demo
from app.workflow.users import create_user
from tests.conftest import BACKEND, Actor, LiveServer

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXCLUDED_PATH = "/api/v1/batches/{batch_id}/events"  # an endless stream: not fuzzable
MAX_EXAMPLES = 12
SEED = 20240601


async def _document(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    document: dict[str, Any] = r.json()
    return document


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if isinstance(op, dict) and "responses" in op
    ]


async def test_every_error_status_is_documented_as_error_body(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert "HTTPValidationError" not in json.dumps(document)
    assert set(schemas["ErrorBody"]["required"]) == {"error", "detail"}
    for path, method, op in _operations(document):
        statuses = {int(s) for s in op["responses"]}
        for status in statuses - set(range(100, 400)):
            if status >= 500:
                continue
            content = op["responses"][str(status)]["content"]
            assert content == {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
            }, (path, method, status)
        if path.startswith("/api/"):
            assert 401 in statuses, (path, method)
            assert op["security"] == [{"bearerAuth": []}]
        if "requestBody" in op:
            assert {400, 413, 422} <= statuses, (path, method)
        if op.get("parameters") or "requestBody" in op:
            assert 422 in statuses, (path, method)
        if "{" in path:
            assert 404 in statuses, (path, method)
    ops = {(p, m): o for p, m, o in _operations(document)}
    for key in (("/api/v1/users", "post"), ("/api/v1/definitions", "post")):
        assert "403" in ops[key]["responses"]
    assert "409" in ops[("/api/v1/tasks/{task_id}/approve", "post")]["responses"]
    assert "503" in ops[("/ready", "get")]["responses"]


async def test_limits_are_in_the_schema(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    ops = {(p, m): o for p, m, o in _operations(document)}
    for path, method, op in _operations(document):
        for param in op.get("parameters", []):
            if param["name"] == "page_size":
                assert param["schema"]["maximum"] == 1000, (path, method)
    schemas = document["components"]["schemas"]
    for name in ("InstanceCreate", "ApproveRequest"):
        form = schemas[name]["properties"]["form_data"]
        assert "maxProperties: 200" in json.dumps(form).replace('"', "").replace("{", ""), form
    assert ops[("/api/v1/instances", "post")]["requestBody"]
    # Ids are BIGINTs, exactly: 2**63 - 1 (a float 9.22e18 would read as 2**63).
    ids = schemas["RetryRequest"]["properties"]["item_ids"]["anyOf"][0]["items"]
    assignee = schemas["ApproveRequest"]["properties"]["next_assignee_id"]["anyOf"][0]
    for schema in (ids, assignee):
        assert schema == {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1}
    raw = json.dumps(document)
    assert "e+18" not in raw and '"maximum": 9.22' not in raw


@pytest.mark.parametrize("settings_overrides", [{"max_page_size": 10}])
async def test_page_size_above_the_limit_is_422(client: httpx.AsyncClient, alice: Actor) -> None:
    r = await alice.get("/api/v1/tasks", params={"page_size": 10})
    assert r.status_code == 200, r.text
    for size in (11, 1001):
        r = await alice.get("/api/v1/tasks", params={"page_size": size})
        assert r.status_code == 422 and r.json()["error"] == "ValidationError", r.text


async def test_schemathesis_finds_no_failures(live_server: LiveServer, tmp_path: Path) -> None:
    """Deterministic (fixed seed, bounded examples per operation, one worker), so a
    failure reproduces; the figures are printed for the record."""
    sm: async_sessionmaker[AsyncSession] = live_server.app.state.sessionmaker
    tokens = {name: token for name, _role, token in await seed_demo(sm)}
    async with sm() as session:
        _user, token = await create_user(session, "Schema Admin", role="admin", department_id=1)
        await session.commit()
    await _some_batches(live_server.url, tokens["manager"], token)

    report = tmp_path / "report.json"
    st = Path(sys.executable).parent / "st"
    command = [
        str(st),
        "run",
        f"{live_server.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path",
        EXCLUDED_PATH,
        # Rotating the fuzzer's own token would leave every later request a 401.
        "--exclude-operation-id",
        "rotate_my_token",
        "--exclude-operation-id",
        "rotate_user_token",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--workers",
        "1",
        "--no-shrink",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    result = json.loads(report.read_text()) if report.exists() else {}
    figures = {
        "backend": BACKEND,
        "operations": result.get("operations"),
        "test_cases": result.get("test_cases"),
        "seconds": round(result.get("running_time", 0.0), 1),
    }
    print(f"schemathesis: {json.dumps(figures)}\n{text[-4000:]}")
    assert proc.returncode == 0, text[-20000:]
    assert result["failures"] == [] and result["errors"] == [], text[-20000:]
    assert result["operations"]["tested"] == result["operations"]["selected"] > 20


async def _some_batches(url: str, manager_token: str, admin_token: str) -> None:
    """A few batches in different states, so fuzzed batch ids (small numbers first)
    reach real rows: a finished approval, a paused one and an instance operation."""
    bodies = [
        (manager_token, {"type": "task.approve", "ids": [1, 2, 3], "params": {}}),
        (
            manager_token,
            {
                "type": "task.approve",
                "filter": {"definition_key": "leave"},
                "start_suspended": True,
            },
        ),
        (admin_token, {"type": "instance.suspend", "ids": [399, 400], "priority": "high"}),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for token, body in bodies:
            r = await client.post(
                "/api/v1/batches", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 202, r.text


BAD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/batches?type=a%00b", {}),
    ("GET", "/api/v1/batches?type=" + "x" * 300, {}),
    ("GET", "/api/v1/batches?page=0", {}),
    ("GET", "/api/v1/batches?page_size=1001", {}),
    ("GET", "/api/v1/batches?creator_id=99999999999999999999", {}),
    ("GET", "/api/v1/batches/0", {}),
    ("GET", "/api/v1/batches/1/details?status=nope", {}),
    ("DELETE", "/api/v1/batches/1?cascade=maybe", {}),
    ("POST", "/api/v1/batches", {"content": b"\xff\xfe\xfa", "json_type": True}),
    ("POST", "/api/v1/batches", {"content": b"not json", "json_type": True}),
    ("POST", "/api/v1/batches", {"content": b"[1, 2]", "json_type": True}),
    ("POST", "/api/v1/batches", {"content": b'{"type": "x"}', "content_type": "text/plain"}),
    ("POST", "/api/v1/batches", {"json": {"type": "task.approve", "ids": [1], "params": []}}),
    ("POST", "/api/v1/batches", {"json": {"type": "task.approve", "filter": "x"}}),
    ("POST", "/api/v1/batches", {"json": {"type": "nope", "ids": [1]}}),
    ("POST", "/api/v1/batches", {"json": {"type": "task.approve", "ids": [2**63]}}),
    ("POST", "/api/v1/batches/1/retry", {"json": {"item_ids": "x"}}),
    ("POST", "/api/v1/tasks/1/approve", {"json": {"decision": "approve", "form_data": []}}),
    ("POST", "/api/v1/tasks/1/approve", {"content": b"\xb2", "json_type": True}),
    ("POST", "/api/v1/instances", {"json": {"definition_key": "a\x00", "title": "t"}}),
    ("POST", "/api/v1/instances", {"json": {"definition_key": "expense", "title": "\x00"}}),
    ("POST", "/api/v1/users", {"json": {"name": "n", "department_id": 2**64}}),
    ("POST", "/api/v1/users/1/grants", {"json": {"definition_key": "no pe"}}),
    ("POST", "/api/v1/definitions", {"json": {"key": "k", "name": "n", "nodes": [{}]}}),
    ("GET", "/api/v1/definitions?key=a%00", {}),
    ("GET", "/api/v1/tasks?ids=%C2%B2", {}),
    ("GET", "/api/v1/tasks?ids=1,,2,99999999999999999999", {}),
    ("GET", "/api/v1/instances?status=nope", {}),
    ("GET", "/api/v1/nodes/a%00/b/view", {}),
    ("GET", "/api/v1/nodes/expense/nope/view?version=0", {}),
]


@pytest.mark.parametrize(("method", "url", "kw"), BAD_REQUESTS)
async def test_hand_picked_bad_input_gets_a_documented_error(
    client: httpx.AsyncClient, admin: Actor, method: str, url: str, kw: dict[str, Any]
) -> None:
    """Inputs fuzzers rarely build: each answer is a status the document lists for
    that operation, with the ``ErrorBody`` shape."""
    document = await _document(client)
    headers = dict(admin.headers)
    if kw.pop("json_type", False):
        headers["Content-Type"] = "application/json"
    if "content_type" in kw:
        headers["Content-Type"] = kw.pop("content_type")
    r = await client.request(method, url, headers=headers, **kw)
    path = httpx.URL(url).path
    operation = _match(document, method.lower(), path)
    assert str(r.status_code) in operation["responses"], (r.status_code, r.text)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) <= {"error", "detail", "fields"} and body["detail"], body


def _match(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    import re

    for template, ops in document["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if method in ops and re.match(pattern, path):
            operation: dict[str, Any] = ops[method]
            return operation
    raise AssertionError(f"{method} {path} is not documented")


EXPECTED_OPERATION_IDS = {
    ("post", "/api/v1/batches"): "create_batch",
    ("get", "/api/v1/batches"): "list_batches",
    ("get", "/api/v1/batches/{batch_id}"): "get_batch",
    ("delete", "/api/v1/batches/{batch_id}"): "cancel_batch",
    ("get", "/api/v1/batches/{batch_id}/details"): "list_batch_details",
    ("post", "/api/v1/batches/{batch_id}/retry"): "retry_batch",
    ("post", "/api/v1/batches/{batch_id}/suspend"): "suspend_batch",
    ("post", "/api/v1/batches/{batch_id}/activate"): "activate_batch",
    ("get", "/api/v1/batches/{batch_id}/events"): "get_batch_events",
    ("get", "/api/v1/batches/{batch_id}/error-file"): "get_batch_error_file",
    ("get", "/api/v1/users/me"): "get_me",
    ("post", "/api/v1/users"): "create_user",
    ("post", "/api/v1/users/{user_id}/grants"): "grant_monitor",
    ("post", "/api/v1/users/me/token"): "rotate_my_token",
    ("post", "/api/v1/users/{user_id}/token"): "rotate_user_token",
    ("post", "/api/v1/definitions"): "create_definition",
    ("get", "/api/v1/definitions"): "list_definitions",
    ("get", "/api/v1/definitions/{definition_id}"): "get_definition",
    ("post", "/api/v1/instances"): "start_instance",
    ("get", "/api/v1/instances"): "list_instances",
    ("get", "/api/v1/instances/{instance_id}"): "get_instance",
    ("get", "/api/v1/tasks"): "list_tasks",
    ("get", "/api/v1/tasks/{task_id}"): "get_task",
    ("post", "/api/v1/tasks/{task_id}/approve"): "approve_task",
    ("get", "/api/v1/nodes/{definition_key}/{node_id}/view"): "get_node_view",
    ("get", "/api/v1/archives"): "list_archives",
    ("get", "/api/v1/archives/{instance_id}"): "get_archive",
    ("get", "/health"): "health",
    ("get", "/ready"): "ready",
}


async def test_every_operation_has_a_chosen_readable_id(client: httpx.AsyncClient) -> None:
    """A generated client's method names come from operationIds: each is chosen on the
    route (or in ``app.openapi.OPERATION_IDS``), snake_case and unique. A new route
    without ``operation_id=`` fails here, with the route named."""
    from app.api import routers
    from app.openapi import routes_of, unnamed_operations

    document = await _document(client)
    assert unnamed_operations(document, routes_of(routers.ALL)) == []
    ids = {(p, m): o["operationId"] for p, m, o in _operations(document)}
    for (method, path), op_id in EXPECTED_OPERATION_IDS.items():
        assert ids[(path, method)] == op_id, (method, path)


def test_an_unnamed_route_is_reported() -> None:
    """The rule itself: FastAPI's generated id is caught, so is a duplicate."""
    from fastapi import APIRouter, FastAPI

    from app.openapi import routes_of, unnamed_operations

    router = APIRouter()

    @router.get("/things")
    async def things() -> dict[str, str]:
        return {}

    @router.get("/others", operation_id="get_thing")
    async def others() -> dict[str, str]:
        return {}

    @router.get("/more", operation_id="get_thing")
    async def more() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router)
    with pytest.warns(UserWarning, match="Duplicate Operation ID get_thing"):
        document = app.openapi()
    problems = unnamed_operations(document, routes_of([router]))
    assert problems == [
        "GET /things: no operation_id",
        "GET /things: operationId 'things_things_get' was generated, not chosen",
        "GET /more: operationId 'get_thing' also names GET /others",
    ]


async def test_tags_are_described(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    described = {t["name"]: t.get("description") for t in document["tags"]}
    for path, method, op in _operations(document):
        assert op.get("tags"), (path, method)
        for tag in op["tags"]:
            assert described.get(tag), (path, method, tag)


async def test_statuses_types_and_priorities_are_enums(client: httpx.AsyncClient) -> None:
    """One named enum per vocabulary, taken from the code that owns it; ``type`` is an
    open enum (built-ins or any registered custom type) on requests and responses."""
    import app.operations as operations
    from app.domain import BatchStatus, DetailStatus
    from app.schemas.batch import OperationType

    schemas = (await _document(client))["components"]["schemas"]
    expected = {
        "BatchStatus": [s.value for s in BatchStatus],
        "DetailStatus": [s.value for s in DetailStatus],
        "InstanceStatus": ["active", "suspended", "completed", "rejected", "terminated"],
        "TaskStatus": ["pending", "completed", "cancelled"],
        "Priority": ["high", "normal", "low"],
        "OperationType": [t.value for t in OperationType],
    }
    for name, values in expected.items():
        assert schemas[name]["enum"] == values, name
    assert "scheduled" in expected["BatchStatus"]
    batch_out = schemas["BatchOut"]["properties"]
    for field, enum in (("status", "BatchStatus"), ("priority", "Priority")):
        assert batch_out[field] == {"$ref": f"#/components/schemas/{enum}"}, field
    assert schemas["DetailOut"]["properties"]["status"]["$ref"].endswith("/DetailStatus")
    assert schemas["TaskOut"]["properties"]["status"]["$ref"].endswith("/TaskStatus")
    assert schemas["InstanceOut"]["properties"]["status"]["$ref"].endswith("/InstanceStatus")
    for model in ("BatchCreate", "BatchOut"):
        assert schemas[model]["properties"]["type"]["anyOf"] == [
            {"$ref": "#/components/schemas/OperationType"},
            {"type": "string", "maxLength": 50},
        ], model
    # The enum lists exactly the types this codebase registers (custom ones registered by
    # other tests live outside ``app.``).
    builtin = {
        name for name, op in operations.OPERATIONS.items() if type(op).__module__.startswith("app.")
    }
    assert {t.value for t in OperationType} == builtin


async def test_main_bodies_and_responses_have_examples(client: httpx.AsyncClient) -> None:
    document = await _document(client)
    ops = {(p, m): o for p, m, o in _operations(document)}
    for key, names in (
        (("/api/v1/batches", "post"), {"approve_by_ids", "approve_by_filter"}),
        (("/api/v1/tasks/{task_id}/approve", "post"), {"approve", "reject"}),
        (("/api/v1/instances", "post"), {"expense"}),
    ):
        examples = ops[key]["requestBody"]["content"]["application/json"]["examples"]
        assert names <= set(examples), key
    by_ids = ops[("/api/v1/batches", "post")]["requestBody"]["content"]["application/json"]
    assert by_ids["examples"]["approve_by_ids"]["value"]["ids"] == [11, 12, 13]
    schemas = document["components"]["schemas"]
    for name in ("BatchOut", "DetailOut"):
        assert schemas[name]["examples"], name


async def test_a_custom_type_is_accepted_and_returned_as_a_string(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """The open enum at run time: a registered custom type validates, an unknown one is
    the service's 422, and a malformed one is one error located at ``type``."""
    r = await admin.post("/api/v1/batches", json={"type": "nope.nope", "ids": [1]})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["type"], r.text
    for bad in ("x" * 51, 5):
        r = await admin.post("/api/v1/batches", json={"type": bad, "ids": [1]})
        assert r.status_code == 422, r.text
        assert [f["loc"] for f in r.json()["fields"]] == [["type"]], r.text


async def test_every_example_matches_its_schema(client: httpx.AsyncClient) -> None:
    """Component examples and request-body examples, checked as a generated client or a
    linter would check them (JSON Schema 2020-12, ``$ref`` into the document)."""
    import jsonschema_rs

    document = await _document(client)
    components = document["components"]

    def check(schema: dict[str, Any], value: Any, where: str) -> None:
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": components})
        errors = [e.message for e in validator.iter_errors(value)]
        assert errors == [], (where, errors)

    checked = 0
    for name, schema in components["schemas"].items():
        for index, example in enumerate(schema.get("examples", [])):
            check({"$ref": f"#/components/schemas/{name}"}, example, f"{name}[{index}]")
            checked += 1
    for path, method, op in _operations(document):
        for media in op.get("requestBody", {}).get("content", {}).values():
            for key, example in media.get("examples", {}).items():
                check(media["schema"], example["value"], f"{method} {path} {key}")
                checked += 1
    assert checked >= 5
    assert "row" in components["schemas"]["DetailOut"]["examples"][0]
