"""Input limits a user can hit: numbers that are not finite or do not
fit, request bodies over ``BATCH_MAX_BODY_BYTES`` (413 before parsing), text over
10 000 characters, forms with more than 200 keys, short error bodies for huge
inputs, and a malformed ``Last-Event-ID`` on the SSE stream. Every refusal is the
JSON error body and writes nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch, BatchDetail, ProcessInstance, Task
from tests.batch_helpers import create, details, wait_for
from tests.conftest import Actor, LiveServer
from tests.factories import bulk_tasks, create_definition, expense_definition, start_instance

NON_FINITE_TEXT: list[Any] = ["NaN", "nan", "Infinity", "-inf", " +inf ", "1e999", "-1E999"]
# Python's JSON parser turns these into float NaN / ±inf.
NON_FINITE_JSON = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]
TOO_BIG: list[Any] = [2**63, -(2**63), 10**30, str(2**63), "-9223372036854775808", "1e300", 1e300]


async def _count(sm: async_sessionmaker[AsyncSession], model: Any) -> int:
    async with sm() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _post_raw(actor: Actor, url: str, content: bytes) -> httpx.Response:
    headers = {**actor.headers, "Content-Type": "application/json"}
    return await actor.client.post(url, content=content, headers=headers)


def _assert_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) <= {"error", "detail", "fields"}, body
    assert isinstance(body["error"], str) and isinstance(body["detail"], str), body
    for needle in needles:
        assert needle in body["detail"], (needle, body)
    return body


# --- 1. numbers that are not finite or do not fit -------------------------------------


async def test_instance_start_refuses_non_finite_and_overflowing_numbers(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    base = {"definition_key": "expense", "title": "Trip"}
    for value in NON_FINITE_TEXT:
        r = await bob.post("/api/v1/instances", json={**base, "form_data": {"amount": value}})
        body = _assert_error(r, 422, "Amount must be a finite number")
        assert body["fields"] == [{"loc": ["form_data", "amount"], "msg": body["detail"]}]
    for raw in NON_FINITE_JSON:
        content = b'{"definition_key": "expense", "title": "T", "form_data": {"amount": %s}}'
        r = await _post_raw(bob, "/api/v1/instances", content % raw)
        body = _assert_error(r, 422, "form_data.amount", "finite")
        assert body["fields"][0]["loc"] == ["form_data", "amount"]
    for value in TOO_BIG:
        r = await bob.post("/api/v1/instances", json={**base, "form_data": {"amount": value}})
        _assert_error(r, 422, "Amount must be between -9223372036854775807 and")
    assert await _count(sessionmaker, ProcessInstance) == 0

    # The largest values that fit are still accepted, as numbers.
    edges: list[tuple[Any, int]] = [(2**63 - 1, 2**63 - 1), (str(-(2**63) + 1), -(2**63) + 1)]
    for edge, stored in edges:
        inst = await start_instance(bob, "expense", "Edge", form_data={"amount": edge})
        assert inst["form_data"]["amount"] == stored
    assert await _count(sessionmaker, ProcessInstance) == 2


async def test_single_approval_refuses_non_finite_numbers(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """At the finance step ``amount`` is writable: a non-finite value is a 422 naming
    the field, and the task stays pending with the form untouched."""
    await create_definition(admin, expense_definition(alice.id, admin.id))
    inst = await start_instance(bob, "expense", "Trip", form_data={"amount": 10})
    r = await alice.post(
        f"/api/v1/tasks/{inst['tasks'][0]['id']}/approve",
        json={"decision": "approve", "form_data": {"category": "travel"}},
    )
    assert r.status_code == 200, r.text
    finance_task = r.json()["instance"]["id"]
    r = await admin.get(f"/api/v1/instances/{finance_task}")
    task_id = r.json()["tasks"][-1]["id"]
    url = f"/api/v1/tasks/{task_id}/approve"

    for value in [*NON_FINITE_TEXT, *TOO_BIG]:
        r = await admin.post(url, json={"decision": "approve", "form_data": {"amount": value}})
        body = _assert_error(r, 422, "Amount must be")
        assert body["fields"][0]["loc"] == ["form_data", "amount"]
    for raw in NON_FINITE_JSON:
        r = await _post_raw(
            admin, url, b'{"decision": "approve", "form_data": {"amount": %s}}' % raw
        )
        _assert_error(r, 422, "form_data.amount", "finite")

    r = await admin.get(f"/api/v1/instances/{inst['id']}")
    assert r.json()["form_data"] == {"amount": 10, "category": "travel"}
    assert r.json()["tasks"][-1]["status"] == "pending"


async def test_batch_item_with_non_finite_number_fails_with_a_sentence(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Text that is not a finite number reaches the items (the batch path uses the
    same check) and each fails with the readable sentence; a JSON NaN/∞ in the params
    is refused when the batch is created, and no batch is written."""
    d = await create_definition(admin, expense_definition(alice.id, bob.id))
    ids = await bulk_tasks(
        sessionmaker,
        definition_id=d["id"],
        definition_key="expense",
        node_id="finance",
        assignee_id=bob.id,
        initiator_id=admin.id,
        n=3,
    )
    for raw in NON_FINITE_JSON:
        content = json.dumps({"type": "task.approve", "ids": ids}).encode()[:-1]
        content += b', "params": {"form_data": {"amount": %s}}}' % raw
        r = await _post_raw(bob, "/api/v1/batches", content)
        _assert_error(r, 422, "form_data.amount", "finite")
    assert await _count(sessionmaker, Batch) == 0

    batch = await create(
        bob, {"type": "task.approve", "ids": ids, "params": {"form_data": {"amount": "1e999"}}}
    )
    done = await wait_for(bob, batch["id"])
    assert done["failed"] == 3 and done["success"] == 0, done
    items = await details(bob, batch["id"])
    assert [i["error"] for i in items] == ["Amount must be a finite number"] * 3
    async with sessionmaker() as s:
        statuses = set(await s.scalars(select(Task.status).where(Task.id.in_(ids))))
    assert statuses == {"pending"}


# --- 2. body size, text length, key counts, short errors --------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2000}])
async def test_body_over_limit_is_413_before_parsing(
    admin: Actor, alice: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    big = {"type": "task.approve", "ids": list(range(1, 1000))}
    r = await alice.post("/api/v1/batches", json=big)
    body = _assert_error(r, 413, "2000 bytes")
    assert body["error"] == "PayloadTooLarge"
    # Not parsed: malformed JSON over the limit is a 413, not a 422.
    r = await _post_raw(alice, "/api/v1/batches", b"{" * 3000)
    _assert_error(r, 413)
    # Not even authenticated first.
    r = await alice.client.post("/api/v1/definitions", content=b"x" * 3000)
    _assert_error(r, 413)

    # Streamed without a Content-Length (chunked): counted as it arrives.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "task.approve", "ids": ['
        for _ in range(100):
            yield b"1, " * 10
        yield b"1]}"

    headers = {**alice.headers, "Content-Type": "application/json"}
    r = await alice.client.post("/api/v1/batches", content=chunks(), headers=headers)
    assert "content-length" not in r.request.headers
    _assert_error(r, 413)
    assert await _count(sessionmaker, Batch) == 0

    # Under the limit, the same endpoint works as before.
    r = await alice.post("/api/v1/batches", json={"type": "task.approve", "ids": [1]})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 1000, "max_upload_bytes": 5000}])
async def test_multipart_bodies_use_the_upload_limit(alice: Actor) -> None:
    def form(size: int) -> dict[str, Any]:
        return {"files": {"file": ("t.xlsx", b"x" * size)}}

    r = await alice.post("/api/v1/batches", **form(3000))
    assert r.status_code == 422, r.text  # past the body limit: judged by the upload limit
    r = await alice.post("/api/v1/batches", **form(6000))
    _assert_error(r, 413, "upload limit of 5000 bytes")


async def test_a_million_ids_fit_in_the_default_body_limit(alice: Actor) -> None:
    content = json.dumps({"item_ids": list(range(1, 1_000_001))}).encode()
    assert len(content) > 2 * 1024 * 1024
    r = await _post_raw(alice, "/api/v1/batches/999999/retry", content)
    _assert_error(r, 404)


async def test_text_over_ten_thousand_characters_is_422_anywhere(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    long = "x" * 10_001
    base = {"definition_key": "expense", "title": "Trip"}
    r = await bob.post("/api/v1/instances", json={**base, "form_data": {"city": long}})
    body = _assert_error(r, 422, "form_data.city", "at most 10000 characters")
    assert body["fields"][0]["loc"] == ["form_data", "city"]
    r = await bob.post("/api/v1/instances", json={**base, "form_data": {long: 1}})
    _assert_error(r, 422, "at most 10000 characters")
    definition = expense_definition(alice.id, admin.id)
    definition["form"][1]["options"] = ["travel", long]
    r = await admin.post("/api/v1/definitions", json=definition)
    _assert_error(r, 422, "at most 10000 characters")
    nested: dict[str, Any] = {"type": "task.approve", "ids": [1]}
    nested["params"] = {"form_data": {"city": {"deep": [long]}}}
    r = await alice.post("/api/v1/batches", json=nested)
    _assert_error(r, 422, "at most 10000 characters")
    # 10 000 exactly is fine.
    inst = await start_instance(bob, "expense", "Trip", form_data={"city": "y" * 10_000})
    assert len(inst["form_data"]["city"]) == 10_000
    assert await _count(sessionmaker, ProcessInstance) == 1
    assert await _count(sessionmaker, Batch) == 0


async def test_form_with_more_than_200_keys_is_422(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await create_definition(admin, expense_definition(alice.id, admin.id))
    inst = await start_instance(bob, "expense", "Trip")
    too_many = {f"k{i}": i for i in range(201)}
    base = {"definition_key": "expense", "title": "Trip"}
    r = await bob.post("/api/v1/instances", json={**base, "form_data": too_many})
    body = _assert_error(r, 422, "form_data", "at most 200 fields, got 201")
    assert body["fields"] == [
        {
            "loc": ["form_data"],
            "msg": "may hold at most 200 fields, got 201",
            "type": "too_many_keys",
        }
    ]
    task_url = f"/api/v1/tasks/{inst['tasks'][0]['id']}/approve"
    r = await alice.post(task_url, json={"decision": "approve", "form_data": too_many})
    _assert_error(r, 422, "at most 200 fields")
    r = await alice.post(
        "/api/v1/batches",
        json={
            "type": "task.approve",
            "ids": [inst["tasks"][0]["id"]],
            "params": {"form_data": too_many},
        },
    )
    _assert_error(r, 422, "Invalid params for task.approve", "at most 200 fields")
    assert await _count(sessionmaker, ProcessInstance) == 1
    assert await _count(sessionmaker, Batch) == 0
    assert await _count(sessionmaker, BatchDetail) == 0


async def test_huge_inputs_get_short_errors(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """100 000 unknown form keys, or 100 000 unknown body keys: one short 422 that
    lists at most 20 problems and counts the rest."""
    await create_definition(admin, expense_definition(alice.id, admin.id))
    keys = {f"unknown_{i}": i for i in range(100_000)}
    base = {"definition_key": "expense", "title": "Trip"}
    r = await bob.post("/api/v1/instances", json={**base, "form_data": keys})
    _assert_error(r, 422, "at most 200 fields, got 100000")
    assert len(r.content) < 1000, r.text

    r = await bob.post("/api/v1/instances", json={**base, **keys})
    body = _assert_error(r, 422, "unknown_0", "and 99980 more")
    assert len(body["fields"]) == 20 and len(r.content) < 5000

    # 200 unknown keys (within the key limit): every one is wrong, 20 are listed.
    few = {f"unknown_{i}": i for i in range(200)}
    r = await bob.post("/api/v1/instances", json={**base, "form_data": few})
    body = _assert_error(r, 422, "unknown_0 is not a field of this form", "and 180 more")
    assert len(body["fields"]) == 20
    assert await _count(sessionmaker, ProcessInstance) == 0


async def test_deep_nesting_and_lone_surrogates_are_422(
    admin: Actor, alice: Actor, bob: Actor, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A value nested 300 deep (storable, but no serialiser reads it back) and a lone
    surrogate escape (a string no UTF-8 encoder takes), as a value or as a key, in a form
    and in a batch's ``variables``: a 422 that is itself valid JSON, and nothing stored."""
    await create_definition(admin, expense_definition(alice.id, admin.id))
    inst = await start_instance(bob, "expense", "Trip")
    deep: Any = "x"
    for _ in range(300):
        deep = {"d": deep}
    base = {"definition_key": "expense", "title": "Trip"}
    r = await bob.post("/api/v1/instances", json={**base, "form_data": {"city": deep}})
    _assert_error(r, 422, "form_data.city", "at most 32 levels deep")
    r = await admin.post(
        "/api/v1/batches",
        json={"type": "instance.set_variables", "ids": [inst["id"]], "params": {"variables": deep}},
    )
    _assert_error(r, 422, "at most 32 levels deep")
    # Too deep for the JSON parser itself: refused as unreadable, not a 500.
    too_deep = b"[" * 100_000 + b"]" * 100_000
    content = b'{"type": "task.approve", "ids": [1], "params": {"form_data": {"c": %s}}}'
    _assert_error(await _post_raw(alice, "/api/v1/batches", content % too_deep), 400)

    surrogate_value = (
        b'{"definition_key": "expense", "title": "T", "form_data": {"city": "Par\\udfffis"}}'
    )
    surrogate_key = b'{"definition_key": "expense", "title": "T", "form_data": {"\\udfff": 1}}'
    for content in (surrogate_value, surrogate_key):
        r = await _post_raw(bob, "/api/v1/instances", content)
        _assert_error(r, 422, "lone surrogate")
    title = b'{"definition_key": "expense", "title": "T\\ud800"}'
    _assert_error(await _post_raw(bob, "/api/v1/instances", title), 422, "title", "unicode")
    r = await _post_raw(
        admin,
        "/api/v1/batches",
        b'{"type": "instance.set_variables", "ids": [%d], '
        b'"params": {"variables": {"\\udfff": "\\udfff"}}}' % inst["id"],
    )
    _assert_error(r, 422, "lone surrogate")
    assert await _count(sessionmaker, ProcessInstance) == 1
    assert await _count(sessionmaker, Batch) == 0
    r = await bob.get(f"/api/v1/instances/{inst['id']}")
    assert r.json()["variables"] == {} or r.json()["variables"] is None


# --- 3. a malformed Last-Event-ID --------------------------------------------------------


async def test_malformed_last_event_id_is_ignored(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
) -> None:
    """Header bytes 0xB2 (decoded as "²": ``isdigit()`` but not ``int()``) and other
    junk used to kill the stream; now the client just gets the stream from the start."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        headers = {"Authorization": f"Bearer {alice.token}"}
        r = await client.post(
            "/api/v1/batches",
            headers=headers,
            json={"type": "task.approve", "ids": [999_999]},  # fails at once → completed
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]
        done = await wait_for(alice, batch_id)
        assert done["status"] == "completed"
        url = f"/api/v1/batches/{batch_id}/events"
        for raw in (b"\xb2", b"\xb2\xb3", "١٢".encode(), b"12abc", b"9" * 40, b"-1"):
            events = []
            async with client.stream(
                "GET",
                url,
                headers=[
                    (b"authorization", f"Bearer {alice.token}".encode()),
                    (b"last-event-id", raw),
                ],
            ) as stream:
                assert stream.status_code == 200, raw
                async for line in stream.aiter_lines():
                    if line.startswith("event:"):
                        events.append(line.split(":", 1)[1].strip())
            assert events == ["progress", "end"], (raw, events)
        # A valid id of the current state: nothing new, only the end.
        seq = str(done["progress_seq"]).encode()
        events = []
        async with client.stream(
            "GET",
            url,
            headers=[(b"authorization", f"Bearer {alice.token}".encode()), (b"last-event-id", seq)],
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
        assert events == ["end"]
