"""Instance filters business_key / started_after / started_before: the same rows on
GET /api/v1/instances and in an instance filter batch (one WHERE translation)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ProcessInstance
from tests.batch_helpers import create, details, wait_for
from tests.conftest import Actor
from tests.factories import create_definition, expense_definition

# name: (definition key, business key, created_at (UTC), status, initiator: "alice"|"bob")
ROWS: dict[str, tuple[str, str, datetime, str, str]] = {
    "early": ("expense", "PO-7", datetime(2026, 1, 1, 23, 59, 59, 999999, UTC), "active", "alice"),
    "edge": ("expense", "PO-7", datetime(2026, 1, 2, 0, 0, tzinfo=UTC), "active", "alice"),
    "later": ("expense", "PO-7", datetime(2026, 1, 5, 8, 30, tzinfo=UTC), "active", "bob"),
    "other_key": ("expense", "PO-8", datetime(2026, 1, 5, tzinfo=UTC), "active", "bob"),
    "prefix": ("expense", "PO-70", datetime(2026, 1, 5, tzinfo=UTC), "active", "bob"),
    "leave": ("leave", "PO-7", datetime(2026, 1, 5, tzinfo=UTC), "active", "bob"),
    "paused": ("expense", "PO-7", datetime(2026, 1, 6, tzinfo=UTC), "suspended", "bob"),
}


async def _arrange(
    sm: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> dict[str, int]:
    """Two definitions and the ROWS instances with exact creation times; name → id."""
    definitions = {
        key: await create_definition(admin, expense_definition(admin.id, admin.id, key=key))
        for key in ("expense", "leave")
    }
    initiators = {"alice": alice.id, "bob": bob.id}
    ids: dict[str, int] = {}
    async with sm() as s:
        for name, (key, business_key, created, status, who) in ROWS.items():
            ids[name] = int(
                await s.scalar(
                    insert(ProcessInstance)
                    .values(
                        definition_id=definitions[key]["id"],
                        definition_key=key,
                        title=f"Order {name}",
                        business_key=business_key,
                        department_id=10,
                        initiator_id=initiators[who],
                        status=status,
                        current_node_id="manager",
                        form_data={},
                        variables={},
                        created_at=created,
                        updated_at=created,
                    )
                    .returning(ProcessInstance.id)
                )
                or 0
            )
        await s.commit()
    return ids


async def _listed(actor: Actor, **params: Any) -> list[int]:
    r = await actor.get("/api/v1/instances", params={"page_size": 1000, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["items"])
    return [item["id"] for item in body["items"]]


def _names(ids: dict[str, int], *names: str) -> list[int]:
    """The ids of ``names`` as the list orders them: newest (highest id) first."""
    return sorted((ids[n] for n in names), reverse=True)


async def test_each_filter_alone_and_combined(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    ids = await _arrange(sessionmaker, admin, alice, bob)
    everything = _names(ids, *ROWS)
    assert await _listed(admin) == everything

    # business_key: exact, so PO-70 is not a PO-7
    assert await _listed(admin, business_key="PO-7") == _names(
        ids, "early", "edge", "later", "leave", "paused"
    )
    assert await _listed(admin, business_key="PO-70") == [ids["prefix"]]
    assert await _listed(admin, business_key="PO") == []

    # started_after is inclusive, started_before exclusive; the offset is honoured
    after = _names(ids, "edge", "later", "other_key", "prefix", "leave", "paused")
    assert await _listed(admin, started_after="2026-01-02T00:00:00Z") == after
    assert await _listed(admin, started_after="2026-01-02T01:00:00+01:00") == after
    assert await _listed(admin, started_after="2026-01-01T19:00:00-05:00") == after
    assert await _listed(admin, started_before="2026-01-02T00:00:00Z") == [ids["early"]]
    assert await _listed(admin, started_before="2026-01-01T23:59:59.999999Z") == []
    assert await _listed(admin, started_after="2026-01-07T00:00:00Z") == []

    # combined: every clause narrows
    window = {"started_after": "2026-01-02T00:00:00Z", "started_before": "2026-01-06T00:00:00Z"}
    assert await _listed(admin, **window) == _names(
        ids, "edge", "later", "other_key", "prefix", "leave"
    )
    assert await _listed(admin, business_key="PO-7", definition_key="expense", **window) == (
        _names(ids, "edge", "later")
    )
    assert await _listed(
        admin, business_key="PO-7", definition_key="expense", started_after="2026-01-02T00:00Z"
    ) == _names(ids, "edge", "later", "paused")
    assert await _listed(
        admin,
        business_key="PO-7",
        definition_key="expense",
        started_after="2026-01-02T00:00Z",
        status="active",
    ) == _names(ids, "edge", "later")
    assert await _listed(admin, business_key="PO-7", keyword="later") == [ids["later"]]

    # filters narrow visibility, never widen it: alice started only "early" and "edge"
    assert await _listed(alice, business_key="PO-7") == _names(ids, "early", "edge")
    assert await _listed(alice, started_after="2026-01-02T00:00:00Z") == [ids["edge"]]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2026-01-02T00:00:00", "timezone"),  # naive: the meaning would depend on the server
        ("2026-01-02", "timezone"),
        ("yesterday", "datetime"),
        ("2026-13-01T00:00:00Z", "datetime"),
        ("0001-01-01T00:00:00+01:00", "years 1..9999"),  # before year 1 in UTC
        ("0.5", "ISO 8601"),  # not seconds since 1970
        ("1767225600", "ISO 8601"),
    ],
)
async def test_bad_datetimes_are_422(admin: Actor, value: str, why: str) -> None:
    for name in ("started_after", "started_before"):
        r = await admin.get("/api/v1/instances", params={name: value})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "ValidationError" and why in body["detail"], body
        assert body["fields"][0]["loc"] == ["query", name], body

        r = await admin.post(
            "/api/v1/batches", json={"type": "instance.suspend", "filter": {name: value}}
        )
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "ValidationError" and why in body["detail"], body
        assert body["fields"][0]["loc"] == ["filter", name], body


async def test_bad_business_key_is_422(admin: Actor) -> None:
    r = await admin.get("/api/v1/instances", params={"business_key": "x" * 201})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError", r.text
    r = await admin.post(
        "/api/v1/batches", json={"type": "instance.suspend", "filter": {"business_key": 7}}
    )
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["filter", "business_key"]


async def test_filter_batch_suspends_exactly_the_matching_instances(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    ids = await _arrange(sessionmaker, admin, alice, bob)
    flt = {
        "definition_key": "expense",
        "started_after": "2026-01-02T02:00:00+02:00",  # = 2026-01-02T00:00Z, inclusive
        "business_key": "PO-7",
    }
    matching = _names(ids, "edge", "later", "paused")
    assert await _listed(admin, **flt) == matching  # the list previews the batch's rows

    batch = await create(admin, {"type": "instance.suspend", "filter": flt})
    assert batch["total"] == 3
    done = await wait_for(admin, batch["id"])
    assert done["status"] == "completed", done
    assert (done["success"], done["ignored"], done["failed"]) == (2, 1, 0), done
    items = await details(admin, batch["id"])
    assert sorted(d["item_id"] for d in items) == sorted(matching)
    assert {d["item_id"]: d["status"] for d in items}[ids["paused"]] == "ignored"

    async with sessionmaker() as s:
        rows = await s.execute(select(ProcessInstance.id, ProcessInstance.status))
        statuses = dict(rows.tuples().all())
    expected = {ids[n]: "active" for n in ROWS}
    expected.update({ids["edge"]: "suspended", ids["later"]: "suspended"})
    expected[ids["paused"]] = "suspended"
    assert statuses == expected
