"""The V2 node view: how every form field appears at one node."""

from __future__ import annotations

from typing import Any

from tests.conftest import Actor
from tests.factories import create_definition, expense_definition


def _by_name(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in view["fields"]}


async def test_manager_view(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, bob.id))
    r = await alice.get("/api/v1/nodes/expense/manager/view")
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["definition_key"] == "expense" and view["version"] == 1
    assert view["node_id"] == "manager" and view["node_name"] == "Manager approval"
    assert [f["name"] for f in view["fields"]] == [
        "amount",
        "category",
        "city",
        "date",
        "paid",
        "tags",
    ]
    fields = _by_name(view)
    assert fields["category"] == {
        "name": "category",
        "label": "Category",
        "type": "select",
        "options": ["travel", "meals", "other"],
        "visible": True,
        "searchable": True,
        "writable": True,
        "required": True,  # node-level required
    }
    # form-level required, but only read here → not required at this node
    assert fields["amount"]["writable"] is False and fields["amount"]["required"] is False
    assert fields["amount"]["visible"] is True and fields["amount"]["options"] == []
    assert fields["date"]["visible"] is False  # hidden
    assert fields["city"]["searchable"] is True and fields["city"]["writable"] is False


async def test_finance_view_form_level_required(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, bob.id))
    fields = _by_name((await bob.get("/api/v1/nodes/expense/finance/view")).json())
    # form-level required + write at this node → required
    assert fields["amount"]["writable"] and fields["amount"]["required"]
    assert fields["amount"]["searchable"]
    assert fields["paid"]["writable"] and not fields["paid"]["required"]
    assert not fields["category"]["writable"] and fields["category"]["visible"]


async def test_latest_version_and_explicit_version(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, bob.id))
    v2 = expense_definition(alice.id, bob.id, director_id=admin.id)
    v2["nodes"][0]["fields"]["city"] = "write"
    await create_definition(admin, v2)
    view = (await alice.get("/api/v1/nodes/expense/manager/view")).json()
    assert view["version"] == 2 and _by_name(view)["city"]["writable"] is True
    r = await alice.get("/api/v1/nodes/expense/manager/view", params={"version": 1})
    assert r.json()["version"] == 1 and _by_name(r.json())["city"]["writable"] is False
    assert (await alice.get("/api/v1/nodes/expense/director/view")).status_code == 200
    r = await alice.get("/api/v1/nodes/expense/director/view", params={"version": 1})
    assert r.status_code == 404


async def test_errors(admin: Actor, alice: Actor, bob: Actor) -> None:
    await create_definition(admin, expense_definition(alice.id, bob.id))
    r = await alice.get("/api/v1/nodes/nope/manager/view")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    r = await alice.get("/api/v1/nodes/expense/nope/view")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await alice.get("/api/v1/nodes/expense/manager/view", params={"version": 9})
    assert r.status_code == 404
    r = await alice.get("/api/v1/nodes/expense/manager/view", params={"version": "x"})
    assert r.status_code == 422
    assert (await alice.client.get("/api/v1/nodes/expense/manager/view")).status_code == 401


async def test_unstorable_path_values_are_422(alice: Actor) -> None:
    assert (await alice.get("/api/v1/nodes/a%00b/manager/view")).status_code == 422
    assert (await alice.get("/api/v1/nodes/expense/a%00b/view")).status_code == 422
    r = await alice.get("/api/v1/nodes/expense/manager/view", params={"version": 10**20})
    assert r.status_code == 422
