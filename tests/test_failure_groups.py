"""Failure groups (``GET /batches/{id}/failures``): alike failures counted once per
(code, message with the item's own id as N, retryable), largest first; a group retried
(``POST /retry {error_code, message}``) and listed (``/details?error_code=…``).

Most failures are written straight into the details of a batch created suspended, so
the codes and sentences are exactly the ones under test and nothing runs meanwhile;
the last tests group real ones: the failed rows of a real template upload (an imported
row's "row 16: " is taken out like the item's id) and a real run over suspended
processes."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from openpyxl import load_workbook
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, BatchDetail
from tests.batch_helpers import create, details, expense_setup, wait_for
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
    """Item 12's own id, its first mention as a whole word, is N; 123, x12, 12a and 12_
    stay as they are, and so does a later 12 (another number that happens to be equal:
    "Task 1 is locked by batch 1.")."""
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
        ("Codes 12a, x12, 12_ and 1.N of 12.", 1, [12]),
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


# ------------------------------------------------------- groups of real failures


def group_keys(body: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(g["error_code"], g["message"], g["count"]) for g in body["groups"]]


async def assert_groups_are_the_details(actor: Actor, batch_id: int) -> dict[str, Any]:
    """Each group's count is the number of failed details its (code, message) lists,
    its samples are among them, and the groups add up to the batch's failures."""
    body = await groups_of(actor, batch_id)
    failed = await details(actor, batch_id, status="failed")
    assert body["total_failed"] == len(failed) == sum(g["count"] for g in body["groups"])
    for group in body["groups"]:
        mine = await details(
            actor, batch_id, error_code=group["error_code"], message=group["message"]
        )
        assert len(mine) == group["count"], group
        assert set(group["sample_item_ids"]) <= {d["item_id"] for d in mine}
    return body


async def test_import_failures_of_alike_rows_are_one_group(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """A real template, filled as a person does: 5 rows approved without the required
    Category, 2 with a bad Decision word, 1 approved properly, the rest left blank — the
    row errors ("row 3: Category is required", "row 5: …") are 2 groups, not 7; a group
    lists and retries exactly its rows."""
    from tests.test_excel_import import upload
    from tests.test_partial_templates import by_header, saved, template

    s = await expense_setup(sessionmaker, admin, alice, bob, 12)
    wb = load_workbook(io.BytesIO(await template(alice)))
    ws = wb["Tasks"]
    col = by_header(ws)
    for r in range(2, 7):  # tasks 0-4: no category
        ws.cell(r, col["Decision"]).value = "approve"
    for r in (7, 8):  # tasks 5, 6
        ws.cell(r, col["Decision"]).value = "maybe"
    ws.cell(9, col["Decision"]).value = "approve"  # task 7: fine
    ws.cell(9, col["Category *"]).value = "meals"
    batch = await upload(alice, saved(wb))
    assert (batch["total"], batch["skipped_rows"]) == (8, 4)
    done = await wait_for(alice, batch["id"])
    assert (done["success"], done["failed"]) == (1, 7), done

    body = await assert_groups_are_the_details(alice, batch["id"])
    required, decision = "row N: Category is required", "row N: Decision must be approve or reject"
    assert group_keys(body) == [("validation", required, 5), ("validation", decision, 2)]
    assert body["groups"][0]["sample_item_ids"] == s.task_ids[:5]
    assert {d["error"] for d in await details(alice, batch["id"], status="failed")} >= {
        "row 2: Category is required",
        "row 8: Decision must be approve or reject",
    }  # the items keep their own row

    retried = await alice.post(
        f"/api/v1/batches/{batch['id']}/retry",
        json={"error_code": "validation", "message": decision},
    )
    assert (retried.status_code, retried.json()["requeued"]) == (202, 2), retried.text
    rows = {d["item_id"]: d for d in await details(alice, batch["id"])}
    assert [rows[t]["retry_count"] for t in s.task_ids[:8]] == [0] * 5 + [1, 1, 0]


async def test_import_failures_of_a_zip_group_whatever_the_workbook_names(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    """A zip's row errors say "row 2 (task-12.xlsx): …"; renamed workbooks (a name with
    parentheses, as a copy gets) group alike."""
    from tests.test_excel_import import upload, zipped
    from tests.test_partial_templates import saved, template

    s = await expense_setup(sessionmaker, admin, alice, bob, 3)
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(await template(alice, "zip"))) as zf:
        for k, name in enumerate(zf.namelist()):
            form = load_workbook(io.BytesIO(zf.read(name)))
            for cells in form.worksheets[0].iter_rows(min_row=2):
                if cells[0].value == "Decision":
                    cells[1].value = "approve"  # the required Category left blank
            members[name if k == 0 else f"copy ({k}) of {name}"] = saved(form)
    batch = await upload(alice, zipped(members), name="forms.zip")
    done = await wait_for(alice, batch["id"])
    assert (done["total"], done["failed"]) == (3, 3), done
    errors = sorted(d["error"] for d in await details(alice, batch["id"]))
    assert errors[-1].startswith("row 3 (copy (2) of task-"), errors

    body = await assert_groups_are_the_details(alice, batch["id"])
    assert group_keys(body) == [("validation", "row N: Category is required", 3)]
    assert body["groups"][0]["sample_item_ids"] == sorted(s.task_ids)


async def suspended_run(
    sm: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    *,
    suspended: int,
    locked: int,
) -> tuple[int, list[int], list[int], int]:
    """A real ``task.approve`` run of Alice's: ``locked`` tasks held by her other
    (suspended) batch and ``suspended`` tasks whose processes are suspended; returns the
    finished batch, the held ids, the suspended ids and the holder batch."""
    from tests.test_failures import set_process_status

    setup = await expense_setup(sm, admin, alice, bob, suspended + locked)
    ids = sorted(setup.task_ids)
    held, stuck = ids[:locked], ids[locked:]
    holder = await create(
        alice, {"type": "task.approve", "ids": held, "params": APPROVE, "start_suspended": True}
    )
    await set_process_status(sm, "suspended", stuck)
    batch = await create(alice, {"type": "task.approve", "ids": ids, "params": APPROVE})
    done = await wait_for(alice, batch["id"])
    assert (done["status"], done["failed"]) == ("completed", len(ids)), done
    return batch["id"], held, stuck, holder["id"]


async def test_a_real_suspended_process_run_groups_by_cause(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, held, stuck, holder = await suspended_run(
        sessionmaker, admin, alice, bob, suspended=23, locked=3
    )
    body = await assert_groups_are_the_details(alice, batch_id)
    assert [
        (g["error_code"], g["message"], g["count"], g["retryable"]) for g in body["groups"]
    ] == [
        ("wrong_state", SUSPENDED.format("N"), 23, False),
        ("locked", f"Task N is locked by batch {holder}.", 3, True),
    ]
    assert body["groups"][0]["sample_item_ids"] == stuck[:10]
    assert body["groups"][1]["sample_item_ids"] == held
