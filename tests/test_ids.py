"""Ids are never handed out twice, on either backend: deleting the newest batch, detail,
instance or task does not free its id for the next row (another user's, even). On
SQLite every such table is AUTOINCREMENT — also after upgrading a database made before
(revision 0004), whose rows, indexes, foreign keys and constraints the upgrade keeps —
and on PostgreSQL each id comes from a sequence. The models and the migrations agree."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi import FastAPI
from sqlalchemy import Integer, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import Base
from app.db.migrate import upgrade_to, upgrade_to_head
from app.db.session import create_engine
from app.main import create_app
from app.workflow.users import hash_token
from tests.batch_helpers import create, details, expense_setup, wait_for
from tests.conftest import ON_POSTGRES, Actor, make_settings
from tests.factories import create_definition, expense_definition, start_instance

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


def id_tables() -> list[str]:
    """Every table whose key the database generates (one integer primary key)."""
    out = []
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        if len(keys) == 1 and isinstance(keys[0].type, Integer) and keys[0].autoincrement:
            out.append(table.name)
    return out


# --------------------------------------------------------------------------- over the API


async def test_purging_the_newest_batch_does_not_free_its_id(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 4)
    body = {"type": "task.approve", "ids": setup.task_ids[:2], "params": APPROVE}
    purged = await create(alice, {**body, "start_suspended": True})
    purged_details = [d["id"] for d in await details(alice, purged["id"])]
    r = await alice.delete(f"/api/v1/batches/{purged['id']}", params={"cascade": "true"})
    assert r.status_code == 204, r.text
    assert (await alice.get(f"/api/v1/batches/{purged['id']}")).status_code == 404

    # The next batch is another user's: it must not take the purged batch's id.
    mine = await create(bob, {"type": "task.approve", "ids": [setup.task_ids[2]]})
    assert mine["id"] > purged["id"]
    await wait_for(bob, mine["id"])
    assert min(d["id"] for d in await details(bob, mine["id"])) > max(purged_details)
    r = await alice.get(f"/api/v1/batches/{purged['id']}")
    assert r.status_code == 404  # alice's purged batch did not come back as bob's


async def test_deleting_the_newest_instance_does_not_free_its_ids(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    await expense_setup(sessionmaker, admin, alice, bob, 2)
    old = await start_instance(admin, "expense", "Deleted trip")
    old_task = max(t["id"] for t in old["tasks"])
    batch = await create(admin, {"type": "instance.delete", "ids": [old["id"]]})
    assert (await wait_for(admin, batch["id"]))["success"] == 1
    assert (await admin.get(f"/api/v1/instances/{old['id']}")).status_code == 404

    new = await start_instance(admin, "expense", "New trip")
    assert new["id"] > old["id"]
    assert min(t["id"] for t in new["tasks"]) > old_task
    archive = (await admin.get(f"/api/v1/archives/{old['id']}")).json()
    assert archive["snapshot"]["instance"]["title"] == "Deleted trip"
    shown = (await admin.get(f"/api/v1/instances/{new['id']}")).json()
    assert shown["title"] == "New trip"


# --------------------------------------------------------------------------- schema


async def test_every_generated_id_comes_from_a_counter_that_never_goes_back(app: FastAPI) -> None:
    """AUTOINCREMENT on SQLite, a sequence on PostgreSQL; and the migrated schema is
    the models' (so a fresh install and an upgraded one are the same)."""
    tables = id_tables()
    assert {"batches", "batch_details", "users", "process_instances", "tasks"} <= set(tables)
    assert {"instance_archives", "action_logs", "process_logs", "sessions"} <= set(tables)

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    engine = app.state.sessionmaker.kw["bind"]
    async with engine.connect() as conn:
        for table in tables:
            if ON_POSTGRES:
                sequence = await conn.scalar(
                    text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}
                )
                assert sequence, table
            else:
                sql = await conn.scalar(
                    text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                    {"t": table},
                )
                assert "AUTOINCREMENT" in sql, table
        assert await conn.run_sync(differences) == []


# --------------------------------------------------------------------------- upgrade


ADMIN_TOKEN = "bd_admin-token-made-before-the-upgrade"
NOW = "2026-12-01 10:00:00.000000"
JSON_EMPTY = "{}"


def _populate_0004(path: Path) -> None:
    """A database as revision 0004 left it, after some use: the newest batch (5) and
    instance (4) were deleted, and only the action log and an archive still name them."""
    rows: dict[str, list[tuple[Any, ...]]] = {
        "users": [
            (1, "Ada", 1, "admin", hash_token(ADMIN_TOKEN), NOW),
            (2, "Alice", 10, "user", hash_token("bd_alice-token"), NOW),
        ],
        "monitor_grants": [(1, 2, "expense", NOW)],
        "process_definitions": [(1, "expense", 1, "Expense", "[]", "[]", NOW)],
        "process_instances": [
            (i, 1, "expense", f"Trip {i}", None, 10, 1, "active", "n1", "{}", "{}", NOW, NOW)
            for i in (1, 2, 3)
        ],
        "tasks": [
            (1, 1, "n1", 2, "pending", None, None, None, NOW, None),
            (2, 2, "n1", 2, "pending", None, None, 2, NOW, None),
            (3, 3, "n1", 2, "completed", "approve", "ok", None, NOW, NOW),
        ],
        "process_logs": [(1, 3, 3, 2, 1, "approved", None, NOW)],
        "batches": [
            (1, "task.approve", "completed", 1, 1, 0, 0, 0, NOW, NOW),
            (2, "task.approve", "suspended", 1, 0, 0, 0, 0, NOW, None),
        ],
        "batch_details": [
            (1, 1, 3, None, "success", None, 0, None, NOW),
            (2, 2, 2, None, "pending", None, 0, None, None),
        ],
        "batch_seed_claims": [(2, 0, 10)],
        "action_logs": [
            (1, 2, "batch.created", 1, JSON_EMPTY, NOW),
            (2, 2, "batch.created", 2, JSON_EMPTY, NOW),
            (3, 1, "batch.created", 5, JSON_EMPTY, NOW),
        ],
        "instance_archives": [(1, 4, "expense", json.dumps({"instance": {"id": 4}}), 1, 5, NOW)],
    }
    columns = {
        "batches": "id, type, status, total, success, failed, ignored, cancelled, created_at,"
        " finished_at, priority, creator_id, params, source, is_single, chunk_size,"
        " max_retries, seed_cursor, seed_until, seeding_done, progress_seq, updated_at",
        "process_instances": "id, definition_id, definition_key, title, business_key,"
        " department_id, initiator_id, status, current_node_id, form_data, variables,"
        " created_at, updated_at",
    }
    batch_rest = ("normal", 2, "{}", "api", 0, 100, 3, 0, 0, 1, 0, NOW)
    with sqlite3.connect(path) as conn:
        for table, values in rows.items():
            if table == "batches":
                values = [row + batch_rest for row in values]
            names = f" ({columns[table]})" if table in columns else ""
            marks = ", ".join("?" * len(values[0]))
            conn.executemany(f"INSERT INTO {table}{names} VALUES ({marks})", values)


def _snapshot(path: Path) -> dict[str, Any]:
    """Rows of every old table, and its indexes (with their SQL: partial ones keep their
    WHERE), foreign keys and unique constraints."""
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'"
                " AND name NOT IN ('alembic_version', 'sessions', 'webhook_subscriptions',"
                " 'webhook_deliveries')"
            )
        ]
        return {
            table: {
                "rows": [
                    dict(zip([c[0] for c in cursor.description], row, strict=True))
                    for cursor in [conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
                    for row in cursor.fetchall()
                ],
                "indexes": sorted(
                    conn.execute(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                        (table,),
                    ).fetchall()
                ),
                "unique": sorted(
                    (tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{ix[1]}')")), ix[2])
                    for ix in conn.execute(f"PRAGMA index_list('{table}')")
                ),
                "foreign_keys": sorted(
                    tuple(fk[2:7]) for fk in conn.execute(f"PRAGMA foreign_key_list('{table}')")
                ),
            }
            for table in tables
        }


async def test_upgrading_a_0004_database_keeps_its_rows_and_stops_reusing_ids(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(url)
    await upgrade_to(engine, "0004")
    _populate_0004(path)
    before = _snapshot(path)
    await upgrade_to_head(engine)
    await engine.dispose()

    after = _snapshot(path)
    assert set(after) == set(before) and len(before) == 11
    for table in before:
        # Columns, indexes and unique constraints later revisions added are not the
        # 0004 rows' business: everything 0004 had must still be there, unchanged.
        old_columns = before[table]["rows"][0].keys() if before[table]["rows"] else ()
        after[table]["rows"] = [{c: r[c] for c in old_columns} for r in after[table]["rows"]]
        old_indexes = {name for name, _ in before[table]["indexes"]}
        after[table]["indexes"] = [i for i in after[table]["indexes"] if i[0] in old_indexes]
        after[table]["unique"] = [u for u in after[table]["unique"] if u in before[table]["unique"]]
        assert after[table] == before[table], table
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() != ("0004",)

    app = create_app(make_settings(url, redis_url=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            admin = Actor(1, ADMIN_TOKEN, client)
            assert (await admin.get("/api/v1/users/me")).json()["name"] == "Ada"
            assert (await admin.get("/api/v1/batches/2")).json()["status"] == "suspended"

            body = {"type": "instance.suspend", "ids": [1], "start_suspended": True}
            first = await create(admin, body)
            assert first["id"] == 6  # past batch 5, purged before the upgrade
            r = await admin.delete(f"/api/v1/batches/{first['id']}", params={"cascade": "true"})
            assert r.status_code == 204
            assert (await create(admin, body))["id"] == 7

            r = await admin.post("/api/v1/users", json={"name": "Carol"})
            assert r.status_code == 201 and r.json()["id"] == 3
            await create_definition(admin, expense_definition(2, 2, key="trip"))
            instance = await start_instance(admin, "trip", "After the upgrade")
            assert instance["id"] == 5  # not 4: that id names an archived instance
            assert [t["id"] for t in instance["tasks"]] == [4]
            archive = await admin.get("/api/v1/archives/4")
            assert archive.json()["snapshot"] == {"instance": {"id": 4}}
