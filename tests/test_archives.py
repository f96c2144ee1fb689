"""GET /api/v1/archives and /archives/{instance_id}: the snapshots taken before
instances were deleted, readable by admins only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import InstanceArchive
from tests.conftest import Actor


def _snapshot(instance_id: int, key: str, title: str) -> dict[str, Any]:
    """The shape instance.delete writes: instance columns, tasks, logs."""
    return {
        "instance": {
            "id": instance_id,
            "definition_key": key,
            "title": title,
            "business_key": None,
            "status": "active",
            "form_data": {"amount": 12.5, "city": "Zürich", "tags": ["urgent"]},
            "variables": {},
            "created_at": "2026-01-01T09:00:00+00:00",
        },
        "tasks": [
            {"id": instance_id * 10, "node_id": "manager", "status": "pending", "decision": None}
        ],
        "logs": [{"id": instance_id * 100, "action": "started", "message": f"started {title}"}],
    }


# (instance_id, definition_key, created_at day, deleted_by, batch_id); 101 is archived twice.
ROWS = [
    (101, "expense", 1, 1, 7),
    (102, "leave", 2, 1, None),
    (103, "expense", 3, None, 8),
    (101, "expense", 4, 1, 9),
]


async def _archive(sm: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    """Insert ROWS; return their summaries as the API should show them, newest first."""
    summaries = []
    async with sm() as s:
        for n, (instance_id, key, day, deleted_by, batch_id) in enumerate(ROWS):
            row = InstanceArchive(
                instance_id=instance_id,
                definition_key=key,
                snapshot=_snapshot(instance_id, key, f"Claim {instance_id}.{n}"),
                deleted_by=deleted_by,
                batch_id=batch_id,
                created_at=datetime(2026, 2, day, 12, 0, tzinfo=UTC),
            )
            s.add(row)
            await s.flush()
            summaries.append(
                {
                    "id": row.id,
                    "instance_id": instance_id,
                    "definition_key": key,
                    "deleted_by": deleted_by,
                    "batch_id": batch_id,
                    "created_at": f"2026-02-0{day}T12:00:00Z",
                }
            )
        await s.commit()
    return summaries[::-1]


def _same_time(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


def _assert_summaries(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [g["id"] for g in got] == [e["id"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert {k: v for k, v in g.items() if k != "created_at"} == {
            k: v for k, v in e.items() if k != "created_at"
        }
        assert _same_time(g["created_at"], e["created_at"]), (g, e)


async def test_list_is_newest_first_filtered_and_paginated(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor
) -> None:
    expected = await _archive(sessionmaker)

    r = await admin.get("/api/v1/archives")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 4 and body["page"] == 1 and body["page_size"] == 50
    _assert_summaries(body["items"], expected)
    assert "snapshot" not in body["items"][0]  # summaries only: snapshots can be large

    r = await admin.get("/api/v1/archives", params={"definition_key": "expense"})
    body = r.json()
    assert body["total"] == 3
    _assert_summaries(body["items"], [e for e in expected if e["definition_key"] == "expense"])

    r = await admin.get("/api/v1/archives", params={"page": 2, "page_size": 3})
    body = r.json()
    assert (body["total"], body["page"], body["page_size"]) == (4, 2, 3)
    _assert_summaries(body["items"], expected[3:])

    r = await admin.get("/api/v1/archives", params={"definition_key": "nothing"})
    assert r.json() == {"items": [], "total": 0, "page": 1, "page_size": 50, "total_exact": True}


async def test_detail_returns_the_newest_snapshot_as_stored(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor
) -> None:
    expected = {e["instance_id"]: e for e in reversed(await _archive(sessionmaker))}

    r = await admin.get("/api/v1/archives/102")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["snapshot"] == _snapshot(102, "leave", "Claim 102.1")
    _assert_summaries([{k: v for k, v in body.items() if k != "snapshot"}], [expected[102]])

    r = await admin.get("/api/v1/archives/101")  # archived twice: the newest (day 4) wins
    body = r.json()
    assert body["snapshot"]["instance"]["title"] == "Claim 101.3"
    assert body["batch_id"] == 9 and _same_time(body["created_at"], "2026-02-04T12:00:00Z")
    assert body["snapshot"]["instance"]["form_data"]["city"] == "Zürich"


async def test_only_admins_may_read_archives(
    sessionmaker: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    admin: Actor,
    alice: Actor,
) -> None:
    await _archive(sessionmaker)
    for url in ("/api/v1/archives", "/api/v1/archives/101"):
        r = await alice.get(url)
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", r.text
        r = await client.get(url)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized", r.text

    r = await admin.get("/api/v1/archives/999")
    assert r.status_code == 404, r.text
    assert r.json() == {"error": "NotFound", "detail": "Instance 999 has no archive."}
    r = await admin.get("/api/v1/archives/0")
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = await admin.get("/api/v1/archives", params={"page_size": 1001})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
