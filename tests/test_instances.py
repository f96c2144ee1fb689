"""Starting instances, the instance list (filters, visibility, pagination) and the
instance detail, over HTTP."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ProcessInstance, ProcessLog, Task
from tests.conftest import Actor, make_actor
from tests.factories import (
    create_definition,
    expense_definition,
    post_raw,
    start_instance,
)


async def _counts(sm: async_sessionmaker[AsyncSession]) -> tuple[int, int, int]:
    async with sm() as s:
        return tuple(  # type: ignore[return-value]
            [
                int(await s.scalar(select(func.count()).select_from(m)) or 0)
                for m in (ProcessInstance, Task, ProcessLog)
            ]
        )


async def test_start_creates_instance_first_task_and_log(
    admin: Actor, alice: Actor, bob: Actor
) -> None:
    d = await create_definition(admin, expense_definition(alice.id, admin.id))
    inst = await start_instance(
        bob,
        "expense",
        "Trip to Berlin",
        business_key="EXP-1",
        form_data={"amount": "12.50", "city": "Berlin", "date": "2026-03-01", "tags": "urgent"},
    )
    assert inst["definition_id"] == d["id"] and inst["definition_key"] == "expense"
    assert inst["status"] == "active" and inst["current_node_id"] == "manager"
    assert inst["initiator_id"] == bob.id and inst["department_id"] == 20
    assert inst["business_key"] == "EXP-1" and inst["variables"] == {}
    assert inst["form_data"] == {
        "amount": 12.5,
        "city": "Berlin",
        "date": "2026-03-01",
        "tags": ["urgent"],
    }
    [task] = inst["tasks"]
    assert task["node_id"] == "manager" and task["assignee_id"] == alice.id
    assert task["status"] == "pending" and task["instance_id"] == inst["id"]
    assert task["decision"] is None and task["locked_by_batch_id"] is None
    [log] = inst["logs"]
    assert log["action"] == "started" and log["actor_id"] == bob.id
    assert log["task_id"] == task["id"]

    r = await bob.get(f"/api/v1/instances/{inst['id']}")
    assert r.status_code == 200 and r.json() == inst


async def test_start_department_override_and_no_required_check(
    admin: Actor, alice: Actor, bob: Actor
) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    inst = await start_instance(bob, "expense", "Empty form", department_id=77)
    assert inst["department_id"] == 77 and inst["form_data"] == {}


async def test_start_uses_latest_version(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    v2 = await create_definition(admin, expense_definition(bob.id, admin.id))
    inst = await start_instance(alice, "expense", "v2")
    assert inst["definition_id"] == v2["id"]
    assert inst["tasks"][0]["assignee_id"] == bob.id


async def test_start_rejects_bad_input_and_writes_nothing(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    base = {"definition_key": "expense", "title": "T"}
    cases = [
        ({**base, "form_data": {"ghost": 1}}, ["form_data", "ghost"]),
        ({**base, "form_data": {"amount": "lots"}}, ["form_data", "amount"]),
        ({**base, "form_data": {"category": "cars"}}, ["form_data", "category"]),
        ({**base, "form_data": {"date": "tomorrow"}}, ["form_data", "date"]),
        ({**base, "form_data": {"paid": "maybe"}}, ["form_data", "paid"]),
        ({**base, "form_data": {"tags": ["urgent", "nope"]}}, ["form_data", "tags"]),
        ({**base, "form_data": {"city": {"a": 1}}}, ["form_data", "city"]),
        ({**base, "form_data": []}, ["form_data"]),
        ({**base, "definition_key": "nope"}, ["definition_key"]),
        ({"definition_key": "expense"}, ["title"]),
        ({**base, "title": ""}, ["title"]),
        ({**base, "department_id": "ten"}, ["department_id"]),
        ({**base, "priority": "high"}, ["priority"]),
    ]
    for payload, loc in cases:
        r = await bob.post("/api/v1/instances", json=payload)
        assert r.status_code == 422, (payload, r.text)
        body = r.json()
        assert body["error"] == "ValidationError"
        assert loc in [f["loc"] for f in body["fields"]], (loc, body)
    r = await bob.post("/api/v1/instances", json={**base, "form_data": {"category": "cars"}})
    assert r.json()["detail"] == "Category must be one of travel, meals, other"
    r = await post_raw(bob, "/api/v1/instances", b'{"definition_key": "expense",')
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = await bob.client.post("/api/v1/instances", json=base)
    assert r.status_code == 401
    assert await _counts(sessionmaker) == (0, 0, 0)


async def test_visibility(
    admin: Actor,
    alice: Actor,
    bob: Actor,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    carol = await make_actor(sessionmaker, client, "Carol", department_id=30)
    await create_definition(admin, expense_definition(alice.id, admin.id))
    await create_definition(admin, expense_definition(alice.id, admin.id, key="leave"))
    mine = await start_instance(bob, "expense", "Bob's trip")
    leave = await start_instance(admin, "leave", "Admin's leave")

    def ids(r: httpx.Response) -> list[int]:
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]]

    # initiator, task holder, stranger, admin
    assert ids(await bob.get("/api/v1/instances")) == [mine["id"]]
    assert ids(await alice.get("/api/v1/instances")) == [leave["id"], mine["id"]]
    assert ids(await carol.get("/api/v1/instances")) == []
    assert ids(await admin.get("/api/v1/instances")) == [leave["id"], mine["id"]]
    assert (await carol.get(f"/api/v1/instances/{mine['id']}")).status_code == 404
    assert (await bob.get(f"/api/v1/instances/{leave['id']}")).status_code == 404
    assert (await alice.get(f"/api/v1/instances/{leave['id']}")).status_code == 200

    # a monitor grant opens every instance of that key, and only that key
    r = await admin.post(f"/api/v1/users/{carol.id}/grants", json={"definition_key": "leave"})
    assert r.status_code == 201
    assert ids(await carol.get("/api/v1/instances")) == [leave["id"]]
    assert (await carol.get(f"/api/v1/instances/{leave['id']}")).status_code == 200
    assert (await carol.get(f"/api/v1/instances/{mine['id']}")).status_code == 404


async def test_filters_order_and_pagination(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    await create_definition(admin, expense_definition(alice.id, admin.id, key="leave"))
    a = await start_instance(bob, "expense", "Trip to Berlin", business_key="EXP-1")
    b = await start_instance(bob, "expense", "Hotel Paris", business_key="exp-2-berlin")
    c = await start_instance(bob, "leave", "Holiday", department_id=99)
    d = await start_instance(bob, "expense", "100% discount_day")

    async def ids(**params: object) -> list[int]:
        r = await admin.get("/api/v1/instances", params=params)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]]

    assert await ids() == [d["id"], c["id"], b["id"], a["id"]]
    assert await ids(definition_key="leave") == [c["id"]]
    assert await ids(keyword="BERLIN") == [b["id"], a["id"]]
    assert await ids(keyword="exp-1") == [a["id"]]
    assert await ids(keyword="%") == [d["id"]]
    assert await ids(keyword="coun__day") == []  # "_" is literal, not a wildcard
    assert await ids(keyword="discount_day") == [d["id"]]
    assert await ids(department_id=99) == [c["id"]]
    assert await ids(department_id=20, definition_key="expense", keyword="hotel") == [b["id"]]
    assert await ids(status="active") == [d["id"], c["id"], b["id"], a["id"]]
    assert await ids(status="suspended") == []

    r = await admin.get("/api/v1/instances", params={"page_size": 3, "page": 2})
    body = r.json()
    assert body["total"] == 4 and body["page"] == 2 and body["page_size"] == 3
    assert [i["id"] for i in body["items"]] == [a["id"]]
    assert "tasks" not in body["items"][0]


async def test_list_and_get_errors(alice: Actor, client: httpx.AsyncClient) -> None:
    r = await alice.get("/api/v1/instances", params={"page_size": 5000})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = await alice.get("/api/v1/instances", params={"status": "sleeping"})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["query", "status"]
    assert (await alice.get("/api/v1/instances", params={"department_id": "x"})).status_code == 422
    assert (await alice.get("/api/v1/instances/9999")).status_code == 404
    assert (await alice.get("/api/v1/instances/abc")).status_code == 422
    assert (await client.get("/api/v1/instances")).status_code == 401


async def test_unstorable_input_is_422_not_500(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """PostgreSQL cannot store NUL characters, NaN in JSONB or ids beyond BIGINT."""
    await create_definition(admin, expense_definition(alice.id, admin.id))
    base = {"definition_key": "expense", "title": "T"}
    for payload in (
        {**base, "title": "bad\x00title"},
        {**base, "form_data": {"city": "Ber\x00lin"}},
        {**base, "form_data": {"ci\x00ty": "Berlin"}},
        {**base, "department_id": 10**20},
    ):
        r = await bob.post("/api/v1/instances", json=payload)
        assert r.status_code == 422, (payload, r.text)
    r = await post_raw(
        bob,
        "/api/v1/instances",
        b'{"definition_key": "expense", "title": "T", "form_data": {"amount": NaN}}',
    )
    assert r.status_code == 422 and "finite" in r.json()["detail"]
    for url in (
        f"/api/v1/instances/{10**20}",
        f"/api/v1/instances?department_id={10**20}",
        "/api/v1/instances?keyword=a%00b",
        "/api/v1/instances?definition_key=a%00b",
    ):
        assert (await bob.get(url)).status_code == 422, url
    assert await _counts(sessionmaker) == (0, 0, 0)
