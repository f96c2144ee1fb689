"""Benchmark data: users, the expense definition and N pending manager tasks, seeded
with set-based SQL (``generate_series`` on PostgreSQL, a recursive CTE on SQLite), and
the checks that a run really changed what it claims to have changed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.base import Base
from app.db.session import transaction
from app.workflow.users import create_user
from tests.factories import expense_definition  # the same definition the suite uses

CATEGORY = "travel"
APPROVE_PARAMS: dict[str, Any] = {"decision": "approve", "form_data": {"category": CATEGORY}}
DEFINITION_KEY = "expense"
TERMINATE_PARAMS: dict[str, Any] = {"reason": "bench"}
VARIABLES: dict[str, Any] = {"cost_center": "CC-7", "priority": 2}
VARIABLES_PARAMS: dict[str, Any] = {"variables": VARIABLES}
VARIABLES_MESSAGE = "set cost_center, priority"
"""The process-log message ``instance.set_variables`` writes for ``VARIABLES``."""


@dataclass(frozen=True)
class World:
    """The people and the definition every measurement uses."""

    admin_id: int
    admin_token: str
    manager_id: int
    manager_token: str
    finance_id: int
    definition_id: int

    def headers(self, who: str) -> dict[str, str]:
        token = self.admin_token if who == "admin" else self.manager_token
        return {"Authorization": f"Bearer {token}"}


async def make_world(sm: async_sessionmaker[AsyncSession], client: httpx.AsyncClient) -> World:
    """Users through the engine, the definition through the API (admin)."""
    async with transaction(sm) as session:
        admin, admin_token = await create_user(session, "bench-admin", role="admin")
        manager, manager_token = await create_user(session, "bench-manager", department_id=10)
        finance, _ = await create_user(session, "bench-finance", department_id=10)
        ids = (admin.id, manager.id, finance.id)
    r = await client.post(
        "/api/v1/definitions",
        json=expense_definition(ids[1], ids[2]),
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    if r.status_code != 201:
        raise RuntimeError(f"creating the definition failed: {r.status_code} {r.text}")
    return World(ids[0], admin_token, ids[1], manager_token, ids[2], int(r.json()["id"]))


def table_names() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables]


async def reset(engine: AsyncEngine, attempts: int = 5) -> None:
    """Empty every application table (ids keep counting, so nothing cached by id in
    the worker — definitions, arq job keys — can collide with the next measurement).
    A worker cron pass running at the same moment can deadlock with the TRUNCATE; then
    it is simply tried again."""
    for attempt in range(attempts):
        try:
            async with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    await conn.execute(text(f"TRUNCATE {', '.join(table_names())} CASCADE"))
                else:
                    for name in reversed(table_names()):
                        await conn.execute(text(f"DELETE FROM {name}"))
            return
        except DBAPIError as exc:
            if attempt == attempts - 1 or "deadlock" not in str(exc).lower():
                raise
            await asyncio.sleep(0.5)


_PG_INSTANCES = """
INSERT INTO process_instances (definition_id, definition_key, title, business_key,
    department_id, initiator_id, status, current_node_id, form_data, variables,
    created_at, updated_at)
SELECT :def_id, CAST(:key AS text), 'Trip ' || g, CAST(:key AS text) || '-' || g, 10,
    :initiator, 'active', 'manager',
    jsonb_build_object('amount', 100 + g,
                       'city', (ARRAY['Berlin','Paris','Rome','Madrid'])[1 + g % 4],
                       'date', '2026-01-15'),
    '{}'::jsonb, now(), now()
FROM generate_series(1, :n) AS g
"""

_SQLITE_INSTANCES = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n)
INSERT INTO process_instances (definition_id, definition_key, title, business_key,
    department_id, initiator_id, status, current_node_id, form_data, variables,
    created_at, updated_at)
SELECT :def_id, :key, 'Trip ' || n, :key || '-' || n, 10, :initiator, 'active', 'manager',
    json_object('amount', 100 + n,
                'city', CASE n % 4 WHEN 0 THEN 'Berlin' WHEN 1 THEN 'Paris'
                                   WHEN 2 THEN 'Rome' ELSE 'Madrid' END,
                'date', '2026-01-15'),
    '{}', :now, :now
FROM g
"""

_TASKS = """
INSERT INTO tasks (instance_id, node_id, assignee_id, status, created_at)
SELECT id, 'manager', :manager, 'pending', {now}
FROM process_instances WHERE definition_key = :key AND status = 'active'
ORDER BY id
"""


async def seed(engine: AsyncEngine, world: World, n: int) -> None:
    """``n`` active expense instances at ``manager``, each with one pending task for the
    manager; then VACUUM/ANALYZE (and a CHECKPOINT on PostgreSQL), as autovacuum would
    have done in steady state, so the measurement does not pay for the bulk load."""
    pg = engine.dialect.name == "postgresql"
    params: dict[str, Any] = {
        "def_id": world.definition_id,
        "key": DEFINITION_KEY,
        "initiator": world.admin_id,
        "manager": world.manager_id,
        "n": n,
    }
    if not pg:
        # SQLite stores naive UTC text (app.db.base.UTCDateTime).
        params["now"] = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    async with engine.begin() as conn:
        await conn.execute(text(_PG_INSTANCES if pg else _SQLITE_INSTANCES), params)
        await conn.execute(
            text(_TASKS.format(now="now()" if pg else ":now")),
            {k: v for k, v in params.items() if k in ("manager", "key", "now")},
        )
    if pg:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE process_instances, tasks, users"))
            await conn.execute(text("CHECKPOINT"))
    else:
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql), params)).scalar_one() or 0)


async def pending_task_ids(engine: AsyncEngine, limit: int | None = None) -> list[int]:
    sql = "SELECT id FROM tasks WHERE node_id = 'manager' AND status = 'pending' ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    async with engine.connect() as conn:
        return [int(r[0]) for r in await conn.execute(text(sql))]


async def active_instance_ids(engine: AsyncEngine, limit: int | None = None) -> list[int]:
    sql = "SELECT id FROM process_instances WHERE status = 'active' ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    async with engine.connect() as conn:
        return [int(r[0]) for r in await conn.execute(text(sql))]


async def check_approved(engine: AsyncEngine, n: int) -> str:
    """'ok' when n tasks were approved with their side effects, else what is missing."""
    pg = engine.dialect.name == "postgresql"
    category = "form_data->>'category'" if pg else "json_extract(form_data, '$.category')"
    got = {
        "completed manager tasks": await scalar(
            engine, "SELECT count(*) FROM tasks WHERE node_id='manager' AND status='completed'"
        ),
        "pending finance tasks": await scalar(
            engine, "SELECT count(*) FROM tasks WHERE node_id='finance' AND status='pending'"
        ),
        "instances at finance with category": await scalar(
            engine,
            "SELECT count(*) FROM process_instances WHERE current_node_id='finance' "
            f"AND {category} = :c",
            c=CATEGORY,
        ),
        "approval logs": await scalar(
            engine, "SELECT count(*) FROM process_logs WHERE action='task.approved'"
        ),
    }
    bad = [f"{k}={v}" for k, v in got.items() if v != n]
    return "ok" if not bad else "MISMATCH " + ", ".join(bad)


async def check_suspended(engine: AsyncEngine, n: int, action: str = "instance.suspend") -> str:
    got = {
        "suspended instances": await scalar(
            engine, "SELECT count(*) FROM process_instances WHERE status='suspended'"
        ),
        "suspend logs": await scalar(
            engine, "SELECT count(*) FROM process_logs WHERE action=:a", a=action
        ),
    }
    bad = [f"{k}={v}" for k, v in got.items() if v != n]
    return "ok" if not bad else "MISMATCH " + ", ".join(bad)


async def check_terminated(engine: AsyncEngine, n: int) -> str:
    """n instances terminated, every task of them cancelled, one log row each (with the
    reason as its message)."""
    got = {
        "terminated instances": await scalar(
            engine, "SELECT count(*) FROM process_instances WHERE status='terminated'"
        ),
        "cancelled tasks of terminated instances": await scalar(
            engine,
            "SELECT count(*) FROM tasks t JOIN process_instances p ON p.id = t.instance_id "
            "WHERE p.status = 'terminated' AND t.status = 'cancelled' "
            "AND t.locked_by_batch_id IS NULL AND t.completed_at IS NOT NULL",
        ),
        "terminate logs": await scalar(
            engine,
            "SELECT count(*) FROM process_logs WHERE action='instance.terminate' AND message=:m",
            m=TERMINATE_PARAMS["reason"],
        ),
    }
    bad = [f"{k}={v}" for k, v in got.items() if v != n]
    not_cancelled = await scalar(
        engine,
        "SELECT count(*) FROM tasks t JOIN process_instances p ON p.id = t.instance_id "
        "WHERE p.status = 'terminated' AND t.status <> 'cancelled'",
    )
    if not_cancelled:
        bad.append(f"tasks of terminated instances not cancelled={not_cancelled}")
    return "ok" if not bad else "MISMATCH " + ", ".join(bad)


async def check_variables(engine: AsyncEngine, n: int) -> str:
    """n instances hold every variable of ``VARIABLES``, one log row each."""
    pg = engine.dialect.name == "postgresql"
    if pg:
        holds, params = "variables @> CAST(:patch AS JSONB)", {"patch": json.dumps(VARIABLES)}
    else:
        holds = " AND ".join(f"json_extract(variables, '$.{k}') = :{k}" for k in VARIABLES)
        params = dict(VARIABLES)
    got = {
        "instances with the variables": await scalar(
            engine, f"SELECT count(*) FROM process_instances WHERE {holds}", **params
        ),
        "set_variables logs": await scalar(
            engine,
            "SELECT count(*) FROM process_logs WHERE action='instance.set_variables' "
            "AND message=:m",
            m=VARIABLES_MESSAGE,
        ),
    }
    bad = [f"{k}={v}" for k, v in got.items() if v != n]
    return "ok" if not bad else "MISMATCH " + ", ".join(bad)
