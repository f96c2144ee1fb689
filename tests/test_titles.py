"""Items people recognise (issue 21): details and dry-run problems carry the item's
title — as the batch's creator sees it, so an item they cannot see stays ``null``
whoever reads — and batches carry their creator's name."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.batch_helpers import Setup, create, details, expense_setup, get_batch
from tests.conftest import Actor
from tests.factories import bulk_tasks
from tests.test_console import Console, browser, console  # noqa: F401 (fixtures)
from tests.test_failure_groups import Failure, fail_items

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def bobs_secret_task(
    sm: async_sessionmaker[AsyncSession], setup: Setup, admin: Actor, bob: Actor
) -> int:
    """One pending task of Bob's ("Secret 1") at the setup's manager step: one Alice
    cannot see."""
    (task_id,) = await bulk_tasks(
        sm,
        definition_id=setup.definition["id"],
        definition_key="expense",
        node_id="manager",
        assignee_id=bob.id,
        initiator_id=admin.id,
        n=1,
        title_prefix="Secret",
    )
    return task_id


async def alice_batch_with_foreign_task(
    sm: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> tuple[int, list[int], int]:
    """Alice's suspended batch over her tasks "Trip 1".."Trip 3" and one task of Bob's
    ("Secret 1", which she cannot see): (batch id, her task ids, his task id)."""
    setup = await expense_setup(sm, admin, alice, bob, 3)
    foreign = await bobs_secret_task(sm, setup, admin, bob)
    batch = await create(
        alice,
        {
            "type": "task.approve",
            "ids": [*setup.task_ids, foreign],
            "params": APPROVE,
            "start_suspended": True,
        },
    )
    return batch["id"], setup.task_ids, foreign


def titles(rows: list[dict[str, Any]]) -> dict[int, str | None]:
    return {r["item_id"]: r["title"] for r in rows}


async def test_details_show_titles_and_hide_what_the_creator_cannot_see(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, mine, foreign = await alice_batch_with_foreign_task(sessionmaker, admin, alice, bob)
    expected = {**{t: f"Trip {i}" for i, t in enumerate(mine, 1)}, foreign: None}
    rows = await details(alice, batch_id)
    assert titles(rows) == expected
    (missing,) = [r for r in rows if r["item_id"] == foreign]
    assert missing["error"] == f"Task {foreign} does not exist."
    assert missing["error_code"] == "not_found"
    # An admin (who could see Bob's task) reads the creator's view: nothing leaks.
    assert titles(await details(admin, batch_id)) == expected
    assert titles(await details(alice, batch_id, status="pending")) == {
        t: f"Trip {i}" for i, t in enumerate(mine, 1)
    }


async def test_failure_group_details_carry_titles(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, mine, foreign = await alice_batch_with_foreign_task(sessionmaker, admin, alice, bob)
    suspended = Failure("The process of task {} is suspended, not active.", "wrong_state", False)
    await fail_items(sessionmaker, batch_id, {mine[1]: suspended})
    assert titles(await details(admin, batch_id, error_code="wrong_state")) == {mine[1]: "Trip 2"}
    assert titles(await details(admin, batch_id, error_code="not_found")) == {foreign: None}


async def test_dry_run_problems_carry_title_and_code(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    foreign = await bobs_secret_task(sessionmaker, setup, admin, bob)
    body = {
        "type": "task.approve",
        "ids": [setup.task_ids[0], foreign],
        "params": {"decision": "approve", "form_data": {"category": "bogus"}},
        "dry_run": True,
    }
    out = await create(alice, body, status=200)
    problems = {p["item_id"]: (p["title"], p["error_code"]) for p in out["problems"]}
    assert problems == {setup.task_ids[0]: ("Trip 1", "validation"), foreign: (None, "not_found")}


async def test_batches_carry_their_creators_name(
    sessionmaker: async_sessionmaker[AsyncSession], admin: Actor, alice: Actor, bob: Actor
) -> None:
    batch_id, _, _ = await alice_batch_with_foreign_task(sessionmaker, admin, alice, bob)
    assert (await get_batch(admin, batch_id))["creator_name"] == "Alice"
    for actor in (admin, alice):
        r = await actor.get("/api/v1/batches")
        assert r.status_code == 200, r.text
        assert [(b["id"], b["creator_name"]) for b in r.json()["items"]] == [(batch_id, "Alice")]
    r = await bob.get("/api/v1/batches")
    assert r.json()["items"] == []


async def test_the_console_shows_creator_names_and_item_titles(
    console: Console,  # noqa: F811 (the fixture imported above)
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    from playwright.async_api import expect

    batch_id, mine, foreign = await alice_batch_with_foreign_task(sessionmaker, admin, alice, bob)
    page = await console.page()
    await console.sign_in(page, admin.token, "/batches")
    await expect(page.locator(f'tr[data-batch-id="{batch_id}"]')).to_contain_text("Alice")
    await page.goto(console.url(f"/batches/{batch_id}"))
    items = page.locator("#detail-table td[data-label=Item]")
    await expect(items).to_have_text(
        [*(f"{t} Trip {i}" for i, t in enumerate(mine, 1)), str(foreign)]
    )
    console.check_clean(admin.token)
