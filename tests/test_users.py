"""Users, tokens and monitor grants over HTTP; authentication and admin-only errors."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import MonitorGrant, User
from tests.conftest import Actor
from tests.factories import post_raw


async def _count(sm: async_sessionmaker[AsyncSession], model: type) -> int:
    async with sm() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_me(alice: Actor, admin: Actor) -> None:
    r = await alice.get("/api/v1/users/me")
    assert r.status_code == 200
    assert r.json() == {
        "id": alice.id,
        "name": "Alice",
        "role": "user",
        "department_id": 10,
        "monitor_keys": [],
    }
    assert (await admin.get("/api/v1/users/me")).json()["role"] == "admin"


async def test_missing_and_invalid_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/users/me")
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    r = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    r = await client.get("/api/v1/users/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


async def test_admin_creates_user_whose_token_works(
    admin: Actor, client: httpx.AsyncClient
) -> None:
    r = await admin.post(
        "/api/v1/users", json={"name": "Carol", "role": "user", "department_id": 30}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "name", "role", "department_id", "token"}
    assert body["name"] == "Carol" and body["role"] == "user" and body["department_id"] == 30
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["id"] == body["id"]


async def test_create_user_defaults_and_admin_role(admin: Actor) -> None:
    r = await admin.post("/api/v1/users", json={"name": "Dan"})
    assert r.status_code == 201
    assert r.json()["role"] == "user" and r.json()["department_id"] is None
    r = await admin.post("/api/v1/users", json={"name": "Eve", "role": "admin"})
    assert r.status_code == 201 and r.json()["role"] == "admin"


async def test_create_user_rejects_bad_input_and_writes_nothing(
    admin: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    before = await _count(sessionmaker, User)
    cases = [
        {"name": "X", "role": "root"},
        {"name": ""},
        {"role": "user"},
        {"name": "X", "department_id": "ten"},
        {"name": "X", "colour": "blue"},
    ]
    for payload in cases:
        r = await admin.post("/api/v1/users", json=payload)
        assert r.status_code == 422, (payload, r.text)
        body = r.json()
        assert body["error"] == "ValidationError" and body["fields"], body
    r = await admin.post("/api/v1/users", json={"name": "X", "role": "root"})
    assert r.json()["fields"][0]["loc"] == ["role"]
    r = await post_raw(admin, "/api/v1/users", b'{"name": ')
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert await _count(sessionmaker, User) == before


async def test_non_admin_cannot_create_users_or_grants(
    alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    before = await _count(sessionmaker, User)
    r = await alice.post("/api/v1/users", json={"name": "Mallory"})
    assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    r = await alice.post(f"/api/v1/users/{bob.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 403
    assert await _count(sessionmaker, User) == before
    assert await _count(sessionmaker, MonitorGrant) == 0


async def test_grants(
    admin: Actor, alice: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    r = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert grant["user_id"] == alice.id and grant["definition_key"] == "expense"
    again = await admin.post(f"/api/v1/users/{alice.id}/grants", json={"definition_key": "expense"})
    assert again.status_code == 201 and again.json()["id"] == grant["id"]
    assert await _count(sessionmaker, MonitorGrant) == 1
    assert (await alice.get("/api/v1/users/me")).json()["monitor_keys"] == ["expense"]


async def test_grant_errors(
    admin: Actor, alice: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    r = await admin.post("/api/v1/users/9999/grants", json={"definition_key": "expense"})
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    for payload in ({}, {"definition_key": ""}, {"definition_key": "x", "extra": 1}):
        r = await admin.post(f"/api/v1/users/{alice.id}/grants", json=payload)
        assert r.status_code == 422, payload
    r = await admin.post("/api/v1/users/abc/grants", json={"definition_key": "expense"})
    assert r.status_code == 422
    assert await _count(sessionmaker, MonitorGrant) == 0


async def test_openapi_documents_engine_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in (
        "/api/v1/users/me",
        "/api/v1/users/{user_id}/grants",
        "/api/v1/users/me/token",
        "/api/v1/users/{user_id}/token",
        "/api/v1/definitions",
        "/api/v1/instances/{instance_id}",
        "/api/v1/tasks/{task_id}/approve",
        "/api/v1/nodes/{definition_key}/{node_id}/view",
    ):
        assert path in paths, path


async def test_out_of_range_values_are_422(admin: Actor, alice: Actor) -> None:
    r = await admin.post("/api/v1/users", json={"name": "X", "department_id": 10**20})
    assert r.status_code == 422
    r = await admin.post("/api/v1/users", json={"name": "X\x00"})
    assert r.status_code == 422
    r = await admin.post(f"/api/v1/users/{10**20}/grants", json={"definition_key": "expense"})
    assert r.status_code == 422
