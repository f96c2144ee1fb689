"""The task list (filters, visibility, ids), reading a task, and single approval over
HTTP: moving through nodes, completing, rejecting, and every refusal (403/404/409/422)
leaving the database untouched."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import pages
from app.models import ProcessInstance, ProcessLog, Task, User
from app.workflow.queries import TASK_INSTANCE_JOIN, task_filter_clauses, task_list, task_page
from tests.batch_helpers import expense_setup
from tests.conftest import Actor, make_actor, postgres_only
from tests.factories import (
    approve,
    bulk_tasks,
    create_definition,
    expense_definition,
    post_raw,
    start_instance,
)

FULL_FORM = {"amount": 120, "city": "Berlin", "date": "2026-03-01"}


async def _setup(admin: Actor, alice: Actor, bob: Actor) -> dict[str, Any]:
    """expense: manager = alice, finance = admin; bob starts one instance."""
    await create_definition(admin, expense_definition(alice.id, admin.id))
    return await start_instance(bob, "expense", "Trip to Berlin", form_data=FULL_FORM)


async def _snapshot(sm: async_sessionmaker[AsyncSession]) -> tuple[Any, ...]:
    """Everything an approval could change, to assert that a refusal changed nothing."""
    async with sm() as s:
        tasks = (
            await s.execute(select(Task.id, Task.status, Task.decision).order_by(Task.id))
        ).all()
        inst = (
            await s.execute(
                select(
                    ProcessInstance.id,
                    ProcessInstance.status,
                    ProcessInstance.current_node_id,
                    ProcessInstance.form_data,
                ).order_by(ProcessInstance.id)
            )
        ).all()
        logs = await s.scalar(select(func.count()).select_from(ProcessLog))
    return tuple(map(tuple, tasks)), tuple(map(tuple, inst)), logs


# --- approval -------------------------------------------------------------------------


async def test_approve_moves_to_next_node_then_completes(
    admin: Actor, alice: Actor, bob: Actor
) -> None:
    inst = await _setup(admin, alice, bob)
    task_id = inst["tasks"][0]["id"]

    r = await approve(alice, task_id, comment="fine", form_data={"category": "travel"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"]["id"] == task_id and body["task"]["status"] == "completed"
    assert body["task"]["decision"] == "approve" and body["task"]["comment"] == "fine"
    assert body["task"]["completed_at"] is not None
    assert body["instance"]["status"] == "active"
    assert body["instance"]["current_node_id"] == "finance"
    assert body["instance"]["form_data"]["category"] == "travel"

    detail = (await bob.get(f"/api/v1/instances/{inst['id']}")).json()
    first, nxt = detail["tasks"]
    assert nxt["node_id"] == "finance" and nxt["assignee_id"] == admin.id
    assert nxt["status"] == "pending"
    assert [log["action"] for log in detail["logs"]] == ["started", "task.approved"]

    r = await approve(admin, nxt["id"], form_data={"amount": "99.5", "paid": "yes"})
    assert r.status_code == 200, r.text
    done = r.json()["instance"]
    assert done["status"] == "completed" and done["current_node_id"] is None
    assert done["form_data"]["amount"] == 99.5 and done["form_data"]["paid"] is True
    detail = (await bob.get(f"/api/v1/instances/{inst['id']}")).json()
    assert [t["status"] for t in detail["tasks"]] == ["completed", "completed"]


async def test_next_assignee_override(admin: Actor, alice: Actor, bob: Actor) -> None:
    inst = await _setup(admin, alice, bob)
    r = await approve(
        alice, inst["tasks"][0]["id"], form_data={"category": "meals"}, next_assignee_id=bob.id
    )
    assert r.status_code == 200, r.text
    r = await bob.get("/api/v1/tasks", params={"status": "pending"})
    [task] = r.json()["items"]
    assert task["node_id"] == "finance" and task["assignee_id"] == bob.id


async def test_reject_sets_instance_rejected(admin: Actor, alice: Actor, bob: Actor) -> None:
    inst = await _setup(admin, alice, bob)
    r = await approve(alice, inst["tasks"][0]["id"], "reject", comment="no receipts")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"]["decision"] == "reject" and body["task"]["status"] == "completed"
    assert body["instance"]["status"] == "rejected"
    detail = (await bob.get(f"/api/v1/instances/{inst['id']}")).json()
    assert len(detail["tasks"]) == 1
    assert detail["logs"][-1]["action"] == "task.rejected"


async def test_refusals_change_nothing(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    inst = await _setup(admin, alice, bob)
    tid = inst["tasks"][0]["id"]
    before = await _snapshot(sessionmaker)

    async def refused(actor: Actor, status: int, *args: Any, **kw: Any) -> dict[str, Any]:
        r = await approve(actor, tid, *args, **kw)
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        return body

    # not the assignee: hidden from bob (404, like a missing task); an admin sees it (403)
    body = await refused(bob, 404, form_data={"category": "travel"})
    assert body == {"error": "NotFound", "detail": f"Task {tid} does not exist."}
    assert (await refused(admin, 403, form_data={"category": "travel"}))["error"] == "Forbidden"
    # form errors: option, type, read-only field, missing required, unknown field
    body = await refused(alice, 422, form_data={"category": "cars"})
    assert body["error"] == "ValidationError"
    assert {
        "loc": ["form_data", "category"],
        "msg": "Category must be one of travel, meals, other",
    } in body["fields"]
    body = await refused(alice, 422, form_data={"category": "travel", "amount": 5})
    assert [f["loc"] for f in body["fields"]] == [["form_data", "amount"]]
    assert "cannot be changed" in body["fields"][0]["msg"]
    body = await refused(alice, 422)
    assert body["fields"] == [{"loc": ["form_data", "category"], "msg": "Category is required"}]
    body = await refused(alice, 422, form_data={"category": "travel", "ghost": 1})
    assert [f["loc"] for f in body["fields"]] == [["form_data", "ghost"]]
    await refused(alice, 422, form_data={"category": "travel"}, next_assignee_id=9999)
    # request shape
    await refused(alice, 422, "maybe")
    await refused(alice, 422, form_data={"category": "travel"}, priority="high")
    await refused(alice, 422, form_data="travel")
    r = await post_raw(alice, f"/api/v1/tasks/{tid}/approve", b'{"decision": "approve"')
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = await alice.client.post(f"/api/v1/tasks/{tid}/approve", json={"decision": "approve"})
    assert r.status_code == 401
    # unknown task
    r = await approve(alice, 999_999, form_data={"category": "travel"})
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    assert await _snapshot(sessionmaker) == before


async def test_wrong_type_at_finance(admin: Actor, alice: Actor, bob: Actor) -> None:
    inst = await _setup(admin, alice, bob)
    r = await approve(alice, inst["tasks"][0]["id"], form_data={"category": "travel"})
    nxt = (await admin.get("/api/v1/tasks", params={"status": "pending"})).json()["items"][0]
    assert r.status_code == 200 and nxt["node_id"] == "finance"
    r = await approve(admin, nxt["id"], form_data={"amount": "abc"})
    assert r.status_code == 422
    assert {"loc": ["form_data", "amount"], "msg": "Amount must be a number"} in r.json()["fields"]
    r = await approve(admin, nxt["id"], form_data={"amount": None})
    assert r.status_code == 422
    assert r.json()["fields"][0]["msg"] == "Amount is required"


async def test_locked_task_is_409(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    inst = await _setup(admin, alice, bob)
    tid = inst["tasks"][0]["id"]
    async with sessionmaker() as s:
        await s.execute(update(Task).where(Task.id == tid).values(locked_by_batch_id=42))
        await s.commit()
    before = await _snapshot(sessionmaker)
    r = await approve(alice, tid, form_data={"category": "travel"})
    assert r.status_code == 409 and r.json()["error"] == "Conflict"
    assert "locked by batch 42" in r.json()["detail"]
    assert await _snapshot(sessionmaker) == before
    listed = (await alice.get(f"/api/v1/tasks/{tid}")).json()
    assert listed["locked_by_batch_id"] == 42


async def test_suspended_instance_is_409(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    inst = await _setup(admin, alice, bob)
    async with sessionmaker() as s:
        await s.execute(
            update(ProcessInstance)
            .where(ProcessInstance.id == inst["id"])
            .values(status="suspended")
        )
        await s.commit()
    before = await _snapshot(sessionmaker)
    r = await approve(alice, inst["tasks"][0]["id"], form_data={"category": "travel"})
    assert r.status_code == 409 and "suspended" in r.json()["detail"]
    assert await _snapshot(sessionmaker) == before


async def test_approving_twice_is_409(admin: Actor, alice: Actor, bob: Actor) -> None:
    inst = await _setup(admin, alice, bob)
    tid = inst["tasks"][0]["id"]
    assert (await approve(alice, tid, form_data={"category": "travel"})).status_code == 200
    r = await approve(alice, tid, form_data={"category": "travel"})
    assert r.status_code == 409 and r.json()["error"] == "Conflict"
    r = await approve(alice, tid, "reject")
    assert r.status_code == 409


# --- listing --------------------------------------------------------------------------


async def test_list_visibility_filters_and_shape(
    admin: Actor,
    alice: Actor,
    bob: Actor,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    carol = await make_actor(sessionmaker, client, "Carol", department_id=30)
    await create_definition(admin, expense_definition(alice.id, admin.id))
    await create_definition(admin, expense_definition(carol.id, admin.id, key="leave"))
    t1 = (await start_instance(bob, "expense", "Trip to Berlin", business_key="B-1"))["tasks"][0]
    t2 = (await start_instance(bob, "expense", "Hotel Rome", department_id=55))["tasks"][0]
    t3 = (await start_instance(bob, "leave", "Holiday in Berlin"))["tasks"][0]
    await approve(alice, t2["id"], form_data={"category": "meals"})

    async def ids(actor: Actor, **params: Any) -> list[int]:
        r = await actor.get("/api/v1/tasks", params=params)
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["items"]]

    r = await alice.get("/api/v1/tasks")
    page = r.json()
    assert page["total"] == 2 and page["page"] == 1 and page["page_size"] == 50
    item = page["items"][-1]
    assert item["id"] == t1["id"]
    assert item["title"] == "Trip to Berlin" and item["definition_key"] == "expense"
    assert item["department_id"] == 20 and item["business_key"] == "B-1"
    assert item["instance_status"] == "active" and item["locked_by_batch_id"] is None
    for key in (
        "instance_id",
        "node_id",
        "assignee_id",
        "status",
        "decision",
        "comment",
        "created_at",
        "completed_at",
    ):
        assert key in item

    all_ids = await ids(admin)
    assert len(all_ids) == 4 and all_ids == sorted(all_ids, reverse=True)
    t2_next = next(i for i in all_ids if i not in (t1["id"], t2["id"], t3["id"]))
    assert await ids(alice) == [t2["id"], t1["id"]]
    assert await ids(carol) == [t3["id"]]
    assert await ids(bob) == []
    assert await ids(alice, status="pending") == [t1["id"]]
    assert await ids(alice, status="completed") == [t2["id"]]
    assert await ids(admin, node_id="finance") == [t2_next]
    assert await ids(admin, definition_key="leave") == [t3["id"]]
    assert await ids(admin, keyword="berlin") == [t3["id"], t1["id"]]
    assert await ids(admin, keyword="b-1") == [t1["id"]]
    assert await ids(admin, department_id=55) == [t2_next, t2["id"]]
    assert await ids(admin, assignee_id=carol.id) == [t3["id"]]
    # a filter for somebody else's tasks narrows to nothing instead of widening
    assert await ids(alice, assignee_id=carol.id) == []
    assert await ids(admin, ids=f"{t1['id']}, {t3['id']},,") == [t3["id"], t1["id"]]
    assert await ids(alice, ids=f"{t1['id']},{t3['id']}") == [t1["id"]]
    assert await ids(admin, ids="") == []

    r = await admin.get("/api/v1/tasks", params={"page_size": 1, "page": 3})
    assert r.json()["total"] == 4 and [t["id"] for t in r.json()["items"]] == [all_ids[2]]


async def test_get_task(admin: Actor, alice: Actor, bob: Actor) -> None:
    inst = await _setup(admin, alice, bob)
    tid = inst["tasks"][0]["id"]
    r = await alice.get(f"/api/v1/tasks/{tid}")
    assert r.status_code == 200
    assert r.json()["id"] == tid and r.json()["title"] == "Trip to Berlin"
    assert (await admin.get(f"/api/v1/tasks/{tid}")).status_code == 200
    assert (await bob.get(f"/api/v1/tasks/{tid}")).status_code == 404
    assert (await alice.get("/api/v1/tasks/999999")).status_code == 404
    assert (await alice.get("/api/v1/tasks/abc")).status_code == 422
    assert (await alice.client.get(f"/api/v1/tasks/{tid}")).status_code == 401


async def test_list_errors(alice: Actor) -> None:
    for params in (
        {"page_size": 5000},
        {"status": "open"},
        {"ids": "1,x"},
        {"ids": "-3"},
        {"ids": ",".join(str(i) for i in range(1, 1002))},
        {"department_id": "ten"},
    ):
        r = await alice.get("/api/v1/tasks", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "ValidationError" and r.json()["fields"]


# --- volume and the reusable filter ---------------------------------------------------


async def test_bulk_seeded_tasks_list_fast(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    d = await create_definition(admin, expense_definition(alice.id, admin.id))
    task_ids = await bulk_tasks(
        sessionmaker,
        definition_id=d["id"],
        definition_key="expense",
        node_id="manager",
        assignee_id=alice.id,
        initiator_id=bob.id,
        n=3000,
    )
    assert len(task_ids) == 3000 and len(set(task_ids)) == 3000
    assert task_ids == sorted(task_ids)

    r = await alice.get("/api/v1/tasks", params={"page_size": 1000, "keyword": "Trip 12"})
    body = r.json()
    # "Trip 12", "Trip 120".."Trip 129", "Trip 1200".."Trip 1299"
    assert body["total"] == 1 + 10 + 100
    r = await alice.get("/api/v1/tasks", params={"page_size": 1000, "page": 3})
    assert r.json()["total"] == 3000 and len(r.json()["items"]) == 1000

    # the first task approves like any other
    ok = await approve(alice, task_ids[0], form_data={"category": "travel"})
    assert ok.status_code == 200, ok.text


async def test_large_lists_estimate_their_total_on_postgresql(
    admin: Actor,
    alice: Actor,
    bob: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``EXACT_UP_TO`` matches a task or instance list says its total is PostgreSQL's
    estimate (never below what it counted) instead of counting every row; at or below
    it, and always on SQLite, the total is exact."""
    monkeypatch.setattr(pages, "EXACT_UP_TO", 5)
    await expense_setup(sessionmaker, admin, alice, bob, 8)
    on_postgres = sessionmaker.kw["bind"].dialect.name == "postgresql"
    for url in ("/api/v1/tasks", "/api/v1/instances"):
        body = (await alice.get(url, params={"page_size": 3})).json()
        assert len(body["items"]) == 3
        if on_postgres:
            assert body["total_exact"] is False and body["total"] >= 6, body
        else:
            assert (body["total"], body["total_exact"]) == (8, True), body
        narrow = (await alice.get(url, params={"keyword": "Trip 1"})).json()
        assert (narrow["total"], narrow["total_exact"]) == (1, True), narrow


@postgres_only
@pytest.mark.parametrize("viewer", ["assignee", "admin"])
async def test_a_users_page_reads_only_their_rows_whatever_the_statistics(
    admin: Actor,
    alice: Actor,
    bob: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
    viewer: str,
) -> None:
    """Alice's 2 000 tasks are analysed while they are every task there is; then Bob gets
    2 000 newer ones (as a running approve batch creates the next step's tasks) and the
    statistics are not refreshed. Alice's first page — her own list, or an admin's list
    filtered by her — is her 50 newest tasks, and its statement reads 50 task rows — her
    (assignee, id) index — instead of walking the primary key back past Bob's 2 000."""
    reader, filters = (alice, {}) if viewer == "assignee" else (admin, {"assignee_id": alice.id})
    d = await create_definition(admin, expense_definition(alice.id, bob.id))
    common = {"definition_id": d["id"], "definition_key": "expense", "initiator_id": admin.id}
    async with sessionmaker() as s, s.begin():
        await s.execute(text("ALTER TABLE tasks SET (autovacuum_enabled = false)"))
    try:
        mine = await bulk_tasks(
            sessionmaker, node_id="manager", assignee_id=alice.id, n=2000, **common
        )
        async with sessionmaker() as s, s.begin():
            await s.execute(text("ANALYZE tasks"))
        await bulk_tasks(sessionmaker, node_id="finance", assignee_id=bob.id, n=2000, **common)
        body = (await reader.get("/api/v1/tasks", params={"page_size": 50, **filters})).json()
        assert [t["id"] for t in body["items"]] == mine[::-1][:50]
        how = "(ANALYZE, FORMAT JSON)"
        [(plan,)] = await explain_first_page(sessionmaker, reader.id, how, **filters)
        scans = [n for n in plan_nodes(plan[0]["Plan"]) if n.get("Relation Name") == "tasks"]
        read = sum(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans)
        assert read == 50, scans
    finally:
        async with sessionmaker() as s, s.begin():
            await s.execute(text("ALTER TABLE tasks RESET (autovacuum_enabled)"))


async def test_a_users_page_searches_their_index_on_sqlite(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The same page on SQLite (the embedded default) searches Alice's (assignee, id)
    index for her rows — no scan of the table, no sort — and lists her newest first."""
    if sessionmaker.kw["bind"].dialect.name != "sqlite":
        pytest.skip("SQLite's plan (the PostgreSQL one is the test above)")
    d = await create_definition(admin, expense_definition(alice.id, bob.id))
    common = {"definition_id": d["id"], "definition_key": "expense", "initiator_id": admin.id}
    mine = await bulk_tasks(sessionmaker, node_id="manager", assignee_id=alice.id, n=60, **common)
    await bulk_tasks(sessionmaker, node_id="finance", assignee_id=bob.id, n=60, **common)
    body = (await alice.get("/api/v1/tasks", params={"page_size": 50})).json()
    assert [t["id"] for t in body["items"]] == mine[::-1][:50]
    steps = [row[-1] for row in await explain_first_page(sessionmaker, alice.id, "QUERY PLAN")]
    on_tasks = [step for step in steps if " tasks " in f"{step} "]
    assert any("ix_tasks_assignee_id (assignee_id=?)" in step for step in on_tasks), steps
    assert not any(step.startswith("SCAN tasks") or "TEMP B-TREE" in step for step in steps)


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """``node`` and every node under it in an ``EXPLAIN (FORMAT JSON)`` plan."""
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]


async def explain_first_page(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int, how: str, **filters: Any
) -> list[Any]:
    """The rows of ``EXPLAIN <how>`` of the first 50-task page of the user's list."""
    async with sessionmaker() as s:
        user = await s.get(User, user_id)
        assert user is not None
        page = task_page(task_list(user, **filters), offset=0, limit=50)
        sql = page.compile(dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True})
        return list((await s.execute(text(f"EXPLAIN {how} {sql}"))).all())


async def test_task_filter_clauses_without_user(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """user=None applies no visibility: what a filter batch uses with assignee_id."""
    await _setup(admin, alice, bob)
    await start_instance(bob, "expense", "Second", department_id=10)
    async with sessionmaker() as s:

        async def count(**kw: Any) -> int:
            stmt = (
                select(func.count())
                .select_from(Task)
                .join(ProcessInstance, TASK_INSTANCE_JOIN)
                .where(*task_filter_clauses(None, **kw))
            )
            return int(await s.scalar(stmt) or 0)

        assert await count() == 2
        assert await count(assignee_id=alice.id, status="pending") == 2
        assert await count(assignee_id=bob.id) == 0
        assert await count(department_id=10, node_id="manager") == 1
        assert await count(ids=[]) == 0


async def test_out_of_range_and_nul_parameters_are_422(admin: Actor, alice: Actor) -> None:
    big = 10**20
    for url in (
        f"/api/v1/tasks/{big}",
        f"/api/v1/tasks?assignee_id={big}",
        f"/api/v1/tasks?department_id={big}",
        f"/api/v1/tasks?ids={big}",
        "/api/v1/tasks?ids=%C2%B2",  # a unicode digit
        "/api/v1/tasks?keyword=a%00b",
        "/api/v1/tasks?node_id=a%00b",
    ):
        r = await admin.get(url)
        assert r.status_code == 422, (url, r.text)
    r = await approve(alice, big)
    assert r.status_code == 422
    r = await approve(alice, 1, next_assignee_id=big)
    assert r.status_code == 422
    r = await approve(alice, 1, comment="nul\x00")
    assert r.status_code == 422


async def test_a_task_shows_the_form_values_its_step_shows_and_no_hidden_one(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """The manager step hides ``date``: the approver's list and task read leave it out."""
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    form = {"amount": 5, "date": "2026-01-01", "category": "travel"}
    async with sessionmaker() as s, s.begin():
        await s.execute(update(ProcessInstance).values(form_data=form))
    r = await alice.get("/api/v1/tasks", params={"definition_key": "expense", "node_id": "manager"})
    assert r.status_code == 200, r.text
    shown = {"amount": 5, "category": "travel"}
    assert [t["form_data"] for t in r.json()["items"]] == [shown, shown]
    one = await alice.get(f"/api/v1/tasks/{setup.task_ids[0]}")
    assert one.json()["form_data"] == shown
