"""Process definitions over HTTP: validation (shape and cross-references), versioning,
listing and reading."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ProcessDefinition
from tests.conftest import Actor
from tests.factories import create_definition, expense_definition, post_raw


async def _count(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as s:
        return int(await s.scalar(select(func.count()).select_from(ProcessDefinition)) or 0)


async def test_create_and_get(admin: Actor, alice: Actor, bob: Actor) -> None:
    payload = expense_definition(alice.id, bob.id)
    d = await create_definition(admin, payload)
    assert d["key"] == "expense" and d["version"] == 1 and d["name"] == "Expense claim"
    assert [n["id"] for n in d["nodes"]] == ["manager", "finance"]
    assert d["form"][0] == {"name": "amount", "label": "Amount", "type": "number", "required": True}
    assert d["form"][1]["options"] == ["travel", "meals", "other"]
    r = await alice.get(f"/api/v1/definitions/{d['id']}")
    assert r.status_code == 200 and r.json() == d


async def test_posting_a_key_again_makes_a_new_version(
    admin: Actor, alice: Actor, bob: Actor
) -> None:
    v1 = await create_definition(admin, expense_definition(alice.id, bob.id))
    v2 = await create_definition(admin, expense_definition(alice.id, bob.id, director_id=admin.id))
    other = await create_definition(admin, expense_definition(alice.id, bob.id, key="leave"))
    assert (v1["version"], v2["version"], other["version"]) == (1, 2, 1)
    assert len(v2["nodes"]) == 3

    r = await alice.get("/api/v1/definitions")
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 2 and page["page"] == 1 and page["page_size"] == 50
    assert [(d["key"], d["version"]) for d in page["items"]] == [("expense", 2), ("leave", 1)]

    r = await alice.get("/api/v1/definitions", params={"all_versions": "true"})
    assert [(d["key"], d["version"]) for d in r.json()["items"]] == [
        ("expense", 2),
        ("expense", 1),
        ("leave", 1),
    ]
    r = await alice.get(
        "/api/v1/definitions", params={"all_versions": "true", "key": "expense", "page_size": 1}
    )
    body = r.json()
    assert body["total"] == 2 and [d["version"] for d in body["items"]] == [2]
    r = await alice.get(
        "/api/v1/definitions",
        params={"all_versions": "true", "key": "expense", "page_size": 1, "page": 2},
    )
    assert [d["version"] for d in r.json()["items"]] == [1]


def _with(payload: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    target = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return out


async def test_validation_errors_name_their_location(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    base = expense_definition(alice.id, bob.id)
    form = base["form"]
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (_with(base, ["form", 0, "type"], "money"), ["form", 0, "type"]),
        (_with(base, ["form", 1, "options"], []), ["form", 1, "options"]),
        (_with(base, ["form", 5, "options"], None), ["form", 5, "options"]),
        (_with(base, ["form", 1, "options"], ["a", "a"]), ["form", 1, "options"]),
        (_with(base, ["form"], [*form, form[2]]), ["form", 6, "name"]),
        (_with(base, ["form", 0, "colour"], "red"), ["form", 0, "colour"]),
        (_with(base, ["nodes"], []), ["nodes"]),
        (_with(base, ["nodes", 1, "id"], "manager"), ["nodes", 1, "id"]),
        (_with(base, ["nodes", 0, "fields", "nope"], "write"), ["nodes", 0, "fields", "nope"]),
        (_with(base, ["nodes", 0, "fields", "city"], "edit"), ["nodes", 0, "fields", "city"]),
        (_with(base, ["nodes", 0, "required"], ["category", "ghost"]), ["nodes", 0, "required", 1]),
        (_with(base, ["nodes", 1, "searchable"], ["ghost"]), ["nodes", 1, "searchable", 0]),
        (_with(base, ["nodes", 1, "assignee_id"], 9999), ["nodes", 1, "assignee_id"]),
        (_with(base, ["nodes", 1, "assignee_id"], "bob"), ["nodes", 1, "assignee_id"]),
        (_with(base, ["key"], "has space"), ["key"]),
        (_with(base, ["nodes", 0, "unknown"], 1), ["nodes", 0, "unknown"]),
    ]
    for payload, loc in cases:
        r = await admin.post("/api/v1/definitions", json=payload)
        assert r.status_code == 422, (loc, r.text)
        body = r.json()
        assert body["error"] == "ValidationError"
        locs = [f["loc"] for f in body["fields"]]
        assert loc in locs, (loc, locs)
    assert await _count(sessionmaker) == 0


async def test_all_cross_field_problems_reported_at_once(admin: Actor, alice: Actor) -> None:
    payload = expense_definition(alice.id, 9999)
    payload["form"][1]["options"] = []
    payload["nodes"][0]["required"] = ["ghost"]
    r = await admin.post("/api/v1/definitions", json=payload)
    assert r.status_code == 422
    locs = [f["loc"] for f in r.json()["fields"]]
    assert ["form", 1, "options"] in locs
    assert ["nodes", 0, "required", 0] in locs
    assert ["nodes", 1, "assignee_id"] in locs


async def test_malformed_json_and_permissions(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    r = await post_raw(admin, "/api/v1/definitions", b"{not json")
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = await alice.post("/api/v1/definitions", json=expense_definition(alice.id, bob.id))
    assert r.status_code == 403
    r = await alice.client.post("/api/v1/definitions", json=expense_definition(alice.id, bob.id))
    assert r.status_code == 401
    assert await _count(sessionmaker) == 0


async def test_get_errors_and_pagination_limits(alice: Actor) -> None:
    assert (await alice.get("/api/v1/definitions/9999")).status_code == 404
    assert (await alice.get("/api/v1/definitions/abc")).status_code == 422
    r = await alice.get("/api/v1/definitions", params={"page_size": 5000})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert (await alice.get("/api/v1/definitions", params={"page": 0})).status_code == 422
    empty = (await alice.get("/api/v1/definitions")).json()
    assert empty == {"items": [], "total": 0, "page": 1, "page_size": 50, "total_exact": True}


async def test_concurrent_posts_of_one_key_get_distinct_versions(
    admin: Actor, alice: Actor, bob: Actor
) -> None:
    payload = expense_definition(alice.id, bob.id)
    responses = await asyncio.gather(
        *(admin.post("/api/v1/definitions", json=payload) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4]


async def test_unstorable_values_are_422(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    base = expense_definition(alice.id, bob.id)
    for payload in (
        _with(base, ["name"], "Exp\x00ense"),
        _with(base, ["form", 1, "options"], ["travel", "me\x00als"]),
        _with(base, ["nodes", 0, "assignee_id"], 10**20),
    ):
        r = await admin.post("/api/v1/definitions", json=payload)
        assert r.status_code == 422, r.text
    assert (await alice.get(f"/api/v1/definitions/{10**20}")).status_code == 422
    assert (await alice.get("/api/v1/definitions?key=a%00")).status_code == 422
    assert await _count(sessionmaker) == 0
