"""Test data builders shared by engine and batch tests.

- ``expense_definition``: a 2- or 3-node definition with every interesting field type;
- ``create_definition`` / ``start_instance`` / ``approve``: the HTTP way (asserting
  success), for tests that exercise the real rules;
- ``bulk_tasks``: thousands of instances with one pending task each, inserted with two
  executemany statements, for tests that need volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.models import ProcessInstance, Task
from tests.conftest import Actor

CATEGORIES = ["travel", "meals", "other"]
CITIES = ["Berlin", "Paris", "Rome", "Madrid"]


def expense_definition(
    manager_id: int,
    finance_id: int,
    *,
    director_id: int | None = None,
    key: str = "expense",
    name: str = "Expense claim",
) -> dict[str, Any]:
    """The ``expense`` definition: manager → finance (→ director when given).

    Form: amount (number, form-required), category (select travel/meals/other),
    city (text), date (date), paid (bool), tags (multiselect).

    - manager: category is ``write`` and required, date is ``hidden``, the rest ``read``;
      so ``{"category": "travel"}`` approves, sending ``amount`` is a 422 (read-only).
    - finance: amount and paid are ``write`` (amount is then required by the form-level
      rule), category is ``read``.
    - director (optional): tags ``write``, nothing required.
    """
    nodes: list[dict[str, Any]] = [
        {
            "id": "manager",
            "name": "Manager approval",
            "assignee_id": manager_id,
            "fields": {"category": "write", "date": "hidden"},
            "required": ["category"],
            "searchable": ["city", "category"],
        },
        {
            "id": "finance",
            "name": "Finance check",
            "assignee_id": finance_id,
            "fields": {"amount": "write", "paid": "write", "category": "read"},
            "required": [],
            "searchable": ["amount"],
        },
    ]
    if director_id is not None:
        nodes.append(
            {
                "id": "director",
                "name": "Director sign-off",
                "assignee_id": director_id,
                "fields": {"tags": "write"},
                "required": [],
                "searchable": [],
            }
        )
    return {
        "key": key,
        "name": name,
        "form": [
            {"name": "amount", "label": "Amount", "type": "number", "required": True},
            {"name": "category", "label": "Category", "type": "select", "options": CATEGORIES},
            {"name": "city", "label": "City", "type": "text"},
            {"name": "date", "label": "Date", "type": "date"},
            {"name": "paid", "label": "Paid", "type": "bool"},
            {
                "name": "tags",
                "label": "Tags",
                "type": "multiselect",
                "options": ["urgent", "client", "internal"],
            },
        ],
        "nodes": nodes,
    }


EXPENSE_DEFINITION = expense_definition


async def create_definition(admin: Actor, payload: dict[str, Any]) -> dict[str, Any]:
    r = await admin.post("/api/v1/definitions", json=payload)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def start_instance(actor: Actor, key: str, title: str, **kw: Any) -> dict[str, Any]:
    """Start an instance (``kw``: department_id, business_key, form_data)."""
    r = await actor.post("/api/v1/instances", json={"definition_key": key, "title": title, **kw})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def approve(actor: Actor, task_id: int, decision: str = "approve", **kw: Any) -> Any:
    """POST /tasks/{id}/approve and return the raw response (callers assert the status)."""
    return await actor.post(f"/api/v1/tasks/{task_id}/approve", json={"decision": decision, **kw})


async def bulk_tasks(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    definition_id: int,
    definition_key: str,
    node_id: str,
    assignee_id: int,
    initiator_id: int,
    n: int,
    department_id: int | None = 10,
    title_prefix: str = "Trip",
    form_data: dict[str, Any] | None = None,
    cities: Sequence[str] = CITIES,
) -> list[int]:
    """Insert ``n`` active instances, each with one pending task at ``node_id``, and
    return the task ids (in instance order). Two executemany INSERT … RETURNING
    statements in one transaction: thousands of rows in well under a second.

    Titles are ``"{title_prefix} {i}"`` (1-based); form data defaults to
    ``{"amount": 100 + i, "city": <cycled from cities>, "date": "2026-01-15"}``.
    """
    if n <= 0:
        return []
    now = utcnow()
    instances = [
        {
            "definition_id": definition_id,
            "definition_key": definition_key,
            "title": f"{title_prefix} {i}",
            "business_key": f"{definition_key}-{i}",
            "department_id": department_id,
            "initiator_id": initiator_id,
            "status": "active",
            "current_node_id": node_id,
            "form_data": (
                dict(form_data)
                if form_data is not None
                else {"amount": 100 + i, "city": cities[i % len(cities)], "date": "2026-01-15"}
            ),
            "variables": {},
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1, n + 1)
    ]
    async with sessionmaker() as session:
        instance_ids = list(
            await session.scalars(
                insert(ProcessInstance).returning(ProcessInstance.id, sort_by_parameter_order=True),
                instances,
            )
        )
        task_ids = list(
            await session.scalars(
                insert(Task).returning(Task.id, sort_by_parameter_order=True),
                [
                    {
                        "instance_id": iid,
                        "node_id": node_id,
                        "assignee_id": assignee_id,
                        "status": "pending",
                        "created_at": now,
                    }
                    for iid in instance_ids
                ],
            )
        )
        await session.commit()
    return task_ids


async def post_raw(actor: Actor, url: str, content: bytes) -> Any:
    """POST a raw (possibly malformed) JSON body as ``actor``."""
    return await actor.client.post(
        url, content=content, headers={**actor.headers, "Content-Type": "application/json"}
    )
