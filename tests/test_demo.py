"""The demo data (``app.demo.seed_demo``) on the suite's backend: what it creates, that
it is idempotent, that its definitions pass the API's own validation, and that its
tasks work with the real engine and the real task list."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.demo import EXPENSE_COUNT, LEAVE_COUNT, OLD_LEAVE_COUNT, seed_demo
from app.models import MonitorGrant, ProcessDefinition, ProcessInstance, Task, User
from app.schemas.engine import DefinitionCreate
from app.workflow.definitions import definition_errors
from app.workflow.forms import check_value
from app.workflow.users import user_by_token

DEMO_ROLES = {"admin": "admin", "manager": "user", "finance": "user", "employee": "user"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def counts(sm: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sm() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (User, ProcessDefinition, ProcessInstance, Task, MonitorGrant)
        }


async def test_seed_demo_creates_users_definitions_and_pending_tasks(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    users = await seed_demo(sessionmaker)
    assert {name: role for name, role, _ in users} == DEMO_ROLES
    tokens = {name: token for name, _, token in users}
    assert len(set(tokens.values())) == 4 and all(t.startswith("bd_") for t in tokens.values())

    async with sessionmaker() as session:
        people = {u.name: u for u in await session.scalars(select(User))}
        assert (people["manager"].department_id, people["finance"].department_id) == (10, 20)
        assert people["employee"].department_id == 10
        definitions = list(await session.scalars(select(ProcessDefinition)))
        assert sorted((d.key, d.version) for d in definitions) == [
            ("expense", 1),
            ("expense", 2),
            ("leave", 1),
        ]
        by_version = {(d.key, d.version): d for d in definitions}
        assert [n["id"] for n in by_version["expense", 2].nodes] == ["manager", "controlling"]
        on_versions = set(
            await session.scalars(
                select(ProcessDefinition.version)
                .join(ProcessInstance, ProcessInstance.definition_id == ProcessDefinition.id)
                .distinct()
            )
        )
        assert on_versions == {1}  # the demo runs on version 1; version 2 is for migrate
        per_node = (
            await session.execute(
                select(Task.node_id, Task.assignee_id, Task.status, func.count()).group_by(
                    Task.node_id, Task.assignee_id, Task.status
                )
            )
        ).all()
        instances = (
            await session.execute(
                select(ProcessInstance.definition_key, func.count()).group_by(
                    ProcessInstance.definition_key
                )
            )
        ).all()
        departments = set(await session.scalars(select(ProcessInstance.department_id).distinct()))
    assert dict(instances) == {"expense": EXPENSE_COUNT, "leave": LEAVE_COUNT}
    assert per_node == [("manager", people["manager"].id, "pending", EXPENSE_COUNT + LEAVE_COUNT)]
    assert len(departments) > 1
    async with sessionmaker() as session:
        leave_created = list(
            await session.scalars(
                select(ProcessInstance.created_at).where(ProcessInstance.definition_key == "leave")
            )
        )
    month_ago = utcnow().replace(tzinfo=None) - timedelta(days=30)
    old = [c for c in leave_created if c.replace(tzinfo=None) < month_ago]
    assert len(old) == OLD_LEAVE_COUNT  # for a started_before filter relative to now

    r = await client.get(
        "/api/v1/tasks", params={"status": "pending"}, headers=bearer(tokens["manager"])
    )
    assert r.status_code == 200, r.text
    assert r.json()["total"] == EXPENSE_COUNT + LEAVE_COUNT >= 300
    r = await client.get(
        "/api/v1/tasks",
        params={"status": "pending", "definition_key": "expense", "keyword": "Berlin"},
        headers=bearer(tokens["manager"]),
    )
    assert r.status_code == 200 and 0 < r.json()["total"] < EXPENSE_COUNT
    r = await client.get("/api/v1/tasks", headers=bearer(tokens["finance"]))
    assert r.json()["total"] == 0


async def test_seed_demo_is_idempotent_and_reissues_tokens(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    first = {name: token for name, _, token in await seed_demo(sessionmaker)}
    before = await counts(sessionmaker)
    second = {name: token for name, _, token in await seed_demo(sessionmaker)}
    assert await counts(sessionmaker) == before
    assert before["users"] == 4 and before["monitor_grants"] == 2
    async with sessionmaker() as session:
        for name in DEMO_ROLES:
            assert first[name] != second[name]
            assert await user_by_token(session, first[name]) is None
            user = await user_by_token(session, second[name])
            assert user is not None and user.name == name
    r = await client.get("/api/v1/users/me", headers=bearer(second["manager"]))
    assert r.status_code == 200
    assert r.json()["monitor_keys"] == ["expense", "leave"]


async def test_demo_definitions_and_form_data_are_valid(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await seed_demo(sessionmaker)
    async with sessionmaker() as session:
        definitions = {d.key: d for d in await session.scalars(select(ProcessDefinition))}
        instances = list(await session.scalars(select(ProcessInstance)))
    for d in definitions.values():
        payload = DefinitionCreate.model_validate(
            {"key": d.key, "name": d.name, "form": d.form, "nodes": d.nodes}
        )
        assert definition_errors(payload) == []
    fields: dict[str, dict[str, dict[str, Any]]] = {
        key: {f["name"]: f for f in d.form} for key, d in definitions.items()
    }
    for instance in instances:
        for name, value in instance.form_data.items():
            ok, _, message = check_value(fields[instance.definition_key][name], value)
            assert ok, f"{instance.business_key}: {message}"
    missing = [
        i for i in instances if i.definition_key == "expense" and "category" not in i.form_data
    ]
    assert 0 < len(missing) < EXPENSE_COUNT // 10  # a few, on purpose, for failed batch items


async def _task_of(sm: async_sessionmaker[AsyncSession], business_key: str) -> int:
    async with sm() as session:
        task_id = await session.scalar(
            select(Task.id)
            .join(ProcessInstance, ProcessInstance.id == Task.instance_id)
            .where(ProcessInstance.business_key == business_key, Task.status == "pending")
        )
    assert task_id is not None
    return task_id


async def test_demo_tasks_approve_through_the_engine(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    tokens = {name: token for name, _, token in await seed_demo(sessionmaker)}
    manager = bearer(tokens["manager"])

    # DEMO-EXP-0015 has no category, which the manager step requires.
    task_id = await _task_of(sessionmaker, "DEMO-EXP-0015")
    url = f"/api/v1/tasks/{task_id}/approve"
    r = await client.post(url, json={"decision": "approve"}, headers=manager)
    assert r.status_code == 422 and "Category" in r.text, r.text
    r = await client.post(
        url, json={"decision": "approve", "form_data": {"category": "travel"}}, headers=manager
    )
    assert r.status_code == 200, r.text
    assert r.json()["instance"]["current_node_id"] == "finance"
    r = await client.get(
        "/api/v1/tasks", params={"status": "pending"}, headers=bearer(tokens["finance"])
    )
    assert r.json()["total"] == 1

    # Leave requests go to HR (the admin) after the manager.
    task_id = await _task_of(sessionmaker, "DEMO-LVE-0001")
    r = await client.post(
        f"/api/v1/tasks/{task_id}/approve", json={"decision": "approve"}, headers=manager
    )
    assert r.status_code == 200, r.text
    assert r.json()["instance"]["current_node_id"] == "hr"
    r = await client.get(
        "/api/v1/tasks",
        params={"status": "pending", "node_id": "hr"},
        headers=bearer(tokens["admin"]),
    )
    assert r.json()["total"] == 1


async def test_every_demo_template_the_console_offers_the_manager_has_rows(
    sessionmaker: async_sessionmaker[AsyncSession], client: httpx.AsyncClient
) -> None:
    """The console's template buttons take a (definition, step) from the latest
    definitions; the demo's instances run on expense version 1, whose manager step has
    version 2's columns, so the manager's expense template holds all 300 tasks (it was
    an empty file). Each template holds what the task list shows at that step; a step
    with no task of the manager's is a 422 saying so, never an empty file."""
    tokens = {name: token for name, _, token in await seed_demo(sessionmaker)}
    manager = bearer(tokens["manager"])
    r = await client.get("/api/v1/definitions", params={"page_size": 200}, headers=manager)
    assert r.status_code == 200, r.text
    latest: dict[str, dict[str, Any]] = {}
    for d in r.json()["items"]:
        if d["key"] not in latest or latest[d["key"]]["version"] < d["version"]:
            latest[d["key"]] = d
    offered = [(key, n["id"]) for key, d in sorted(latest.items()) for n in d["nodes"]]
    assert offered == [
        ("expense", "manager"),
        ("expense", "controlling"),
        ("leave", "manager"),
        ("leave", "hr"),
    ]
    rows: dict[tuple[str, str], int] = {}
    for key, node in offered:
        listed = await client.get(
            "/api/v1/tasks",
            params={"status": "pending", "definition_key": key, "node_id": node, "page_size": 1},
            headers=manager,
        )
        r = await client.post(
            "/api/v1/approval-templates",
            json={"definition_key": key, "node_id": node},
            headers=manager,
        )
        if listed.json()["total"] == 0:
            assert r.status_code == 422, r.text
            assert r.json()["detail"].startswith("You have no pending tasks at step"), r.text
            continue
        assert r.status_code == 200, r.text
        rows[key, node] = int(r.headers["x-batchd-tasks"])
        assert rows[key, node] == listed.json()["total"]
    assert rows == {("expense", "manager"): EXPENSE_COUNT, ("leave", "manager"): LEAVE_COUNT}
