"""Demo data for ``batchd seed-demo`` and ``batchd serve --demo``.

Why it exists: a newcomer should see a populated system (users with tokens, two
definitions, a few hundred pending tasks) within one command, so batch operations can
be tried straight away. Everything is idempotent: users and definitions are looked up
by name / key and created only if absent, instances by their ``DEMO-…`` business key.
The only thing a second run changes is the demo users' tokens: tokens are stored
hashed, so issuing fresh ones is the only way to show them again.

What the README's worked example relies on (``tests/test_readme_example.py`` runs it):

- About 1 in 15 expense claims deliberately has no ``category`` (required at the
  manager step), so an approve batch without ``form_data`` shows realistic failed items,
  which a second batch with the missing category then approves.
- ``expense`` has a second version (its finance step is called ``controlling``), so
  ``instance.migrate`` has somewhere to go; the demo instances run on version 1. Its
  manager step has the same columns in both versions, so the manager's expense
  template holds the 300 claims (``app.excel.template`` takes every version whose step
  matches the latest; ``tests/test_demo.py`` checks every template the console offers).
- The first ``OLD_LEAVE_COUNT`` leave requests were filed two to three months ago
  (relative to now), so a ``started_before`` filter finds stale requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.session import transaction
from app.models import ProcessDefinition, ProcessInstance, Task, User
from app.schemas.engine import DefinitionCreate
from app.workflow.definitions import create_definition, latest_definition
from app.workflow.users import create_user, grant_monitor, rotate_token

EXPENSE_COUNT = 300
LEAVE_COUNT = 100
OLD_LEAVE_COUNT = 20
"""Leave requests created 60 to 79 days before the seed (the others within ~3 days)."""
RANDOM_SEED = 20261123


@dataclass(frozen=True)
class DemoUser:
    name: str
    role: str
    department_id: int | None


DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("admin", "admin", None),
    DemoUser("manager", "user", 10),
    DemoUser("finance", "user", 20),
    DemoUser("employee", "user", 10),
)

CITIES = (
    "Berlin",
    "Paris",
    "London",
    "Madrid",
    "Rome",
    "Vienna",
    "Prague",
    "Lisbon",
    "Warsaw",
    "Amsterdam",
)
EXPENSE_CATEGORIES = ("travel", "meals", "other")
LEAVE_TYPES = ("annual", "sick", "unpaid")
DEPARTMENTS = (10, 10, 20, 30)

EXPENSE_FORM: list[dict[str, Any]] = [
    {"name": "amount", "label": "Amount", "type": "number", "required": True},
    {
        "name": "category",
        "label": "Category",
        "type": "select",
        "options": list(EXPENSE_CATEGORIES),
    },
    {"name": "city", "label": "City", "type": "text"},
    {"name": "trip_date", "label": "Trip date", "type": "date"},
    {"name": "approved_budget", "label": "Approved budget", "type": "number"},
]

LEAVE_FORM: list[dict[str, Any]] = [
    {"name": "days", "label": "Days", "type": "number", "required": True},
    {
        "name": "type",
        "label": "Leave type",
        "type": "select",
        "options": list(LEAVE_TYPES),
        "required": True,
    },
    {"name": "start", "label": "First day", "type": "date", "required": True},
    {"name": "reason", "label": "Reason", "type": "text"},
]


def expense_nodes(manager_id: int, finance_id: int) -> list[dict[str, Any]]:
    """manager (sets the category) → finance (sets the approved budget)."""
    return [
        {
            "id": "manager",
            "name": "Manager approval",
            "assignee_id": manager_id,
            "fields": {"category": "write", "approved_budget": "hidden"},
            "required": ["category"],
            "searchable": ["city", "category"],
        },
        {
            "id": "finance",
            "name": "Finance approval",
            "assignee_id": finance_id,
            "fields": {"approved_budget": "write"},
            "required": ["approved_budget"],
            "searchable": ["city", "category", "amount"],
        },
    ]


def expense_v2_nodes(manager_id: int, finance_id: int) -> list[dict[str, Any]]:
    """Version 2: the same manager step; the finance step is now ``controlling``."""
    manager, finance = expense_nodes(manager_id, finance_id)
    return [manager, {**finance, "id": "controlling", "name": "Controlling"}]


def leave_nodes(manager_id: int, hr_id: int) -> list[dict[str, Any]]:
    """manager (reads everything) → hr (may correct the leave type; the reason is private)."""
    return [
        {
            "id": "manager",
            "name": "Manager approval",
            "assignee_id": manager_id,
            "fields": {},
            "required": [],
            "searchable": ["type"],
        },
        {
            "id": "hr",
            "name": "HR approval",
            "assignee_id": hr_id,
            "fields": {"type": "write", "reason": "hidden"},
            "required": ["type"],
            "searchable": ["type", "start"],
        },
    ]


async def seed_demo(sm: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, str]]:
    """Create the demo data if absent and return ``(name, role, fresh token)`` per user.

    One transaction, so a failed run leaves nothing half-seeded.
    """
    async with transaction(sm) as session:
        users, tokens = await _ensure_users(session)
        manager, finance, employee = users["manager"], users["finance"], users["employee"]
        expense = await _ensure_definition(
            session, "expense", "Expense claim", EXPENSE_FORM, expense_nodes(manager.id, finance.id)
        )
        await _ensure_definition(
            session,
            "expense",
            "Expense claim",
            EXPENSE_FORM,
            expense_v2_nodes(manager.id, finance.id),
            version=2,
        )
        leave = await _ensure_definition(
            session,
            "leave",
            "Leave request",
            LEAVE_FORM,
            leave_nodes(manager.id, users["admin"].id),
        )
        for key in ("expense", "leave"):
            await grant_monitor(session, manager.id, key)
        await _ensure_instances(session, expense, _expense_rows(employee.id), "DEMO-EXP-")
        await _ensure_instances(session, leave, _leave_rows(employee.id), "DEMO-LVE-")
        return [(u.name, u.role, tokens[u.name]) for u in users.values()]


async def _ensure_users(session: AsyncSession) -> tuple[dict[str, User], dict[str, str]]:
    users: dict[str, User] = {}
    tokens: dict[str, str] = {}
    for spec in DEMO_USERS:
        user = await session.scalar(
            select(User).where(User.name == spec.name).order_by(User.id).limit(1)
        )
        if user is None:
            user, token = await create_user(
                session, spec.name, role=spec.role, department_id=spec.department_id
            )
        else:  # re-issued: the old token and its browser sessions end
            token = await rotate_token(session, user, actor_id=None)
        users[spec.name] = user
        tokens[spec.name] = token
    await session.flush()
    return users, tokens


async def _ensure_definition(
    session: AsyncSession,
    key: str,
    name: str,
    form: list[dict[str, Any]],
    nodes: list[dict[str, Any]],
    *,
    version: int = 1,
) -> ProcessDefinition:
    """Version ``version`` of ``key``, created (as the next version) if absent.

    New definitions go through the same validation and storage as
    ``POST /api/v1/definitions``, so the demo can never hold a definition the API
    would reject. Versions are created in order (1 before 2), so the next version is
    the one asked for on a demo database.
    """
    existing = await session.scalar(
        select(ProcessDefinition).where(
            ProcessDefinition.key == key, ProcessDefinition.version == version
        )
    )
    if existing is not None:
        return existing
    latest = await latest_definition(session, key)
    if latest is not None and latest.version >= version:
        return latest  # an older version was deleted by hand: keep what is there
    payload = DefinitionCreate.model_validate(
        {"key": key, "name": name, "form": form, "nodes": nodes}
    )
    return await create_definition(session, payload)


@dataclass(frozen=True)
class _InstanceSpec:
    business_key: str
    title: str
    department_id: int
    initiator_id: int
    form_data: dict[str, Any]
    created_at: datetime


def _expense_rows(initiator_id: int) -> list[_InstanceSpec]:
    rng = random.Random(RANDOM_SEED)
    now = utcnow()
    rows = []
    for i in range(1, EXPENSE_COUNT + 1):
        city = rng.choice(CITIES)
        category = rng.choice(EXPENSE_CATEGORIES)
        trip = date(2026, 1, 1) + timedelta(days=rng.randrange(0, 330))
        amount = round(rng.uniform(20, 2500), 2) if category == "travel" else rng.randrange(8, 400)
        title = {
            "travel": f"Trip to {city}",
            "meals": f"Client dinner in {city}",
            "other": f"Conference fees, {city}",
        }[category]
        form: dict[str, Any] = {"amount": amount, "city": city, "trip_date": trip.isoformat()}
        if i % 15 != 0:  # every 15th claim is missing its category (see module docstring)
            form["category"] = category
        rows.append(
            _InstanceSpec(
                business_key=f"DEMO-EXP-{i:04d}",
                title=f"{title} ({trip:%d %b})",
                department_id=DEPARTMENTS[i % len(DEPARTMENTS)],
                initiator_id=initiator_id,
                form_data=form,
                created_at=now - timedelta(minutes=17 * (EXPENSE_COUNT - i) + 5),
            )
        )
    return rows


def _leave_rows(initiator_id: int) -> list[_InstanceSpec]:
    rng = random.Random(RANDOM_SEED + 1)
    now = utcnow()
    rows = []
    for i in range(1, LEAVE_COUNT + 1):
        kind = rng.choice(LEAVE_TYPES)
        days = rng.randrange(1, 15)
        start = date(2026, 1, 5) + timedelta(days=rng.randrange(0, 330))
        rows.append(
            _InstanceSpec(
                business_key=f"DEMO-LVE-{i:04d}",
                title=f"{kind.capitalize()} leave, {days} day{'s' if days > 1 else ''} "
                f"from {start:%d %b}",
                department_id=DEPARTMENTS[i % len(DEPARTMENTS)],
                initiator_id=initiator_id,
                form_data={
                    "days": days,
                    "type": kind,
                    "start": start.isoformat(),
                    "reason": rng.choice(("family", "holiday", "medical", "moving house")),
                },
                created_at=(
                    now - timedelta(days=80 - i, minutes=7)
                    if i <= OLD_LEAVE_COUNT
                    else now - timedelta(minutes=41 * (LEAVE_COUNT - i) + 3)
                ),
            )
        )
    return rows


async def _ensure_instances(
    session: AsyncSession, definition: ProcessDefinition, specs: list[_InstanceSpec], prefix: str
) -> int:
    """Bulk-insert the missing demo instances, each with a pending task at the first node.

    Returns how many were inserted.
    """
    existing = set(
        await session.scalars(
            select(ProcessInstance.business_key).where(
                ProcessInstance.definition_key == definition.key,
                ProcessInstance.business_key.like(f"{prefix}%"),
            )
        )
    )
    missing = [s for s in specs if s.business_key not in existing]
    if not missing:
        return 0
    first = definition.nodes[0]
    rows = [
        {
            "definition_id": definition.id,
            "definition_key": definition.key,
            "title": s.title,
            "business_key": s.business_key,
            "department_id": s.department_id,
            "initiator_id": s.initiator_id,
            "status": "active",
            "current_node_id": first["id"],
            "form_data": s.form_data,
            "variables": {},
            "created_at": s.created_at,
            "updated_at": s.created_at,
        }
        for s in missing
    ]
    result = await session.execute(
        insert(ProcessInstance).returning(
            ProcessInstance.id, ProcessInstance.created_at, sort_by_parameter_order=True
        ),
        rows,
    )
    tasks = [
        {
            "instance_id": instance_id,
            "node_id": first["id"],
            "assignee_id": first["assignee_id"],
            "status": "pending",
            "created_at": created_at,
        }
        for instance_id, created_at in result.all()
    ]
    await session.execute(insert(Task), tasks)
    return len(missing)
