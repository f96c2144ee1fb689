"""Failure groups (``GET /batches/{id}/failures``): alike failures counted once per
(code, message with the item's own id as N, retryable), largest first; a group retried
(``POST /retry {error_code, message}``) and listed (``/details?error_code=…``).

Failures are written straight into the details of a batch created suspended, so the
codes and sentences are exactly the ones under test and nothing runs meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, BatchDetail
from tests.batch_helpers import create, details, expense_setup
from tests.conftest import Actor

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}
SUSPENDED = "The process of task {} is suspended, not active."
LOCKED = "Task {} is locked by batch 5."


@dataclass
class Failure:
    """How one item failed: its sentence (``{}`` → the item id), code and retryable."""

    error: str | None
    error_code: str | None
    retryable: bool | None


async def fail_items(
    sm: async_sessionmaker[AsyncSession], batch_id: int, failures: dict[int, Failure]
) -> None:
    """Mark these items of the batch failed as given, and its counter to match."""
    async with sm() as session:
        for item_id, f in failures.items():
            await session.execute(
                update(BatchDetail)
                .where(BatchDetail.batch_id == batch_id, BatchDetail.item_id == item_id)
                .values(
                    status="failed",
                    error=f.error.format(item_id) if f.error else None,
                    error_code=f.error_code,
                    retryable=f.retryable,
                )
            )
        await session.execute(
            update(Batch).where(Batch.id == batch_id).values(failed=len(failures))
        )
        await session.commit()


async def suspended_batch(
    sm: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor, n: int
) -> tuple[int, list[int]]:
    """Alice's suspended ``task.approve`` batch over ``n`` of her tasks (ids ascending)."""
    setup = await expense_setup(sm, admin, alice, bob, n)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "start_suspended": True},
    )
    return batch["id"], sorted(setup.task_ids)


async def groups_of(actor: Actor, batch_id: int, status: int = 200) -> dict[str, Any]:
    r = await actor.get(f"/api/v1/batches/{batch_id}/failures")
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def two_groups(
    sm: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> tuple[int, list[int], list[int], list[int]]:
    """14 wrong_state failures, 3 locked ones, 1 legacy one (no code), 2 items pending."""
    batch_id, ids = await suspended_batch(sm, admin, alice, bob, 20)
    suspended, locked, legacy = ids[:14], ids[14:17], ids[17:18]
    await fail_items(
        sm,
        batch_id,
        {i: Failure(SUSPENDED, "wrong_state", False) for i in suspended}
        | {i: Failure(LOCKED, "locked", True) for i in locked}
        | {i: Failure("Boom", None, None) for i in legacy},
    )
    return batch_id, suspended, locked, legacy


async def test_alike_failures_are_one_group_largest_first(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, suspended, locked, legacy = await two_groups(sessionmaker, admin, alice, bob)

    assert await groups_of(alice, batch_id) == {
        "total_failed": 18,
        "groups": [
            {
                "error_code": "wrong_state",
                "message": "The process of task N is suspended, not active.",
                "count": 14,
                "retryable": False,
                "sample_item_ids": suspended[:10],
            },
            {
                "error_code": "locked",
                "message": "Task N is locked by batch 5.",
                "count": 3,
                "retryable": True,
                "sample_item_ids": locked,
            },
            {
                "error_code": "internal",  # a legacy failure without a code
                "message": "Boom",
                "count": 1,
                "retryable": False,
                "sample_item_ids": legacy,
            },
        ],
        "groups_truncated": False,
    }
    # The admin sees the same groups; the counts are the details' own.
    body = await groups_of(admin, batch_id)
    failed = await details(alice, batch_id, status="failed")
    for group in body["groups"]:
        mine = await details(alice, batch_id, error_code=group["error_code"])
        assert len(mine) == group["count"]
        assert set(group["sample_item_ids"]) <= {d["item_id"] for d in mine}
    assert body["total_failed"] == len(failed) == 18


async def test_normalizing_takes_out_only_the_items_own_id(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """Item 12's own id is N; 123, x12, 12a and 12_ stay as they are."""
    batch_id, _ = await suspended_batch(sessionmaker, admin, alice, bob, 1)
    rows = [
        (12, "Item 123 failed."),
        (123, "Item 123 failed."),
        (7, "Item 7 failed."),
        (12, "Codes 12a, x12, 12_ and 1.12 of 12."),
    ]
    async with sessionmaker() as session:
        session.add_all(
            BatchDetail(
                batch_id=batch_id,
                item_id=item,
                status="failed",
                error=error,
                error_code="conflict",
                retryable=False,
            )
            for item, error in rows
        )
        await session.commit()

    body = await groups_of(alice, batch_id)
    assert body["total_failed"] == 4
    assert [(g["message"], g["count"], g["sample_item_ids"]) for g in body["groups"]] == [
        ("Item N failed.", 2, [123, 7]),
        ("Codes 12a, x12, 12_ and 1.N of N.", 1, [12]),
        ("Item 123 failed.", 1, [12]),
    ]


async def test_at_most_50_groups(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, _ = await suspended_batch(sessionmaker, admin, alice, bob, 1)
    async with sessionmaker() as session:
        session.add_all(
            BatchDetail(
                batch_id=batch_id,
                item_id=1000 + k,
                status="failed",
                error=f"Reason {k:02}",
                error_code="validation",
                retryable=False,
            )
            for k in range(52)
        )
        await session.commit()

    body = await groups_of(alice, batch_id)
    assert (body["total_failed"], len(body["groups"]), body["groups_truncated"]) == (52, 50, True)
    assert [g["message"] for g in body["groups"]] == [f"Reason {k:02}" for k in range(50)]


async def test_visibility_and_a_batch_without_failures(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, _ = await suspended_batch(sessionmaker, admin, alice, bob, 2)
    assert await groups_of(alice, batch_id) == {
        "total_failed": 0,
        "groups": [],
        "groups_truncated": False,
    }
    missing = await groups_of(bob, batch_id, 404)
    assert missing == (await groups_of(bob, 10**9, 404)) | {"detail": missing["detail"]}
    assert str(batch_id) in missing["detail"]
    assert (await groups_of(admin, batch_id))["total_failed"] == 0
    r = await bob.post(f"/api/v1/batches/{batch_id}/retry", json={"error_code": "locked"})
    assert r.status_code == 404, r.text
    r = await bob.get(f"/api/v1/batches/{batch_id}/details", params={"error_code": "locked"})
    assert r.status_code == 404, r.text


async def test_retry_a_group_requeues_exactly_that_group(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, suspended, locked, legacy = await two_groups(sessionmaker, admin, alice, bob)

    r = await alice.post(
        f"/api/v1/batches/{batch_id}/retry",
        json={"error_code": "wrong_state", "message": SUSPENDED.format("N")},
    )
    assert r.status_code == 202, r.text
    assert (r.json()["requeued"], r.json()["batch"]["failed"]) == (14, 4)
    rows = {d["item_id"]: d for d in await details(alice, batch_id)}
    assert {i for i, d in rows.items() if d["status"] == "failed"} == set(locked + legacy)
    assert all(rows[i]["status"] == "pending" and rows[i]["retry_count"] == 1 for i in suspended)
    body = await groups_of(alice, batch_id)
    assert [(g["error_code"], g["count"]) for g in body["groups"]] == [
        ("locked", 3),
        ("internal", 1),
    ]

    # A message matching nothing requeues nothing.
    r = await alice.post(
        f"/api/v1/batches/{batch_id}/retry", json={"error_code": "locked", "message": "Other"}
    )
    assert (r.status_code, r.json()["requeued"]) == (202, 0)
    # The code alone takes the group's every message (the legacy one is `internal`).
    r = await alice.post(f"/api/v1/batches/{batch_id}/retry", json={"error_code": "internal"})
    assert (r.status_code, r.json()["requeued"]) == (202, 1)
    assert (await groups_of(alice, batch_id))["total_failed"] == 3


async def test_retry_group_bad_requests_are_422(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, _, locked, _ = await two_groups(sessionmaker, admin, alice, bob)
    for body in (
        {"message": "Task N is locked by batch 5."},
        {"error_code": "locked", "item_ids": locked},
        {"error_code": "no_such_code"},
        {"error_code": "locked", "message": "a\x00b"},
    ):
        r = await alice.post(f"/api/v1/batches/{batch_id}/retry", json=body)
        assert r.status_code == 422, (body, r.text)
    assert (await groups_of(alice, batch_id))["total_failed"] == 18


async def test_details_filter_by_group(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, suspended, locked, _ = await two_groups(sessionmaker, admin, alice, bob)

    got = await details(alice, batch_id, error_code="locked")
    assert [d["item_id"] for d in got] == locked
    assert {(d["status"], d["error_code"], d["retryable"]) for d in got} == {
        ("failed", "locked", True)
    }
    assert [
        d["item_id"]
        for d in await details(
            alice, batch_id, error_code="wrong_state", message=SUSPENDED.format("N")
        )
    ] == suspended
    assert await details(alice, batch_id, error_code="wrong_state", message="Other") == []
    assert await details(alice, batch_id, error_code="locked", status="pending") == []
    r = await alice.get(
        f"/api/v1/batches/{batch_id}/details", params={"page_size": 5, "error_code": "wrong_state"}
    )
    assert (r.json()["total"], len(r.json()["items"])) == (14, 5)
    for params in ({"message": "Boom"}, {"error_code": "nope"}):
        r = await alice.get(f"/api/v1/batches/{batch_id}/details", params=params)
        assert r.status_code == 422, (params, r.text)
