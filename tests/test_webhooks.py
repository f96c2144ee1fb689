"""Webhooks: signed deliveries a real receiver verifies with ``standardwebhooks``, the
outbox (one row per event, retries with the same ``webhook-id``, delivery after a
crash), the SSRF guard, isolation between users, auto-disable, the delivery log, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.batches import state
from app.db.base import utcnow
from app.domain import BatchStatus
from app.models import Batch, User, WebhookDelivery, WebhookSubscription
from app.webhooks import delivery as delivery_module
from app.webhooks import outbox
from app.webhooks import service as webhook_service
from tests.batch_helpers import (
    create,
    eventually,
    expense_setup,
    recording_context,
    wait_for,
)
from tests.conftest import ON_POSTGRES, Actor
from tests.test_console import Console, browser, console  # noqa: F401 - the browser fixtures
from tests.webhook_receiver import Receiver, receiver

DEV = {"webhook_allow_private": True}
APPROVE = {"decision": "approve", "comment": "ok", "form_data": {"category": "travel"}}
MISSING = {"type": "task.approve", "ids": [900_001], "params": APPROVE}
"""A batch whose only item does not exist: decided at creation, so it completes at once."""


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(DEV)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 50 ms instead of 5 s, 30 s, …: the schedule is a module constant."""
    monkeypatch.setattr(webhook_service, "BACKOFF_S", (0.05,) * 6)
    monkeypatch.setattr(webhook_service, "THEN_EVERY_S", 0.05)


async def subscribe(actor: Actor, url: str, status: int = 201, **body: Any) -> dict[str, Any]:
    r = await actor.post("/api/v1/webhooks", json={"url": url, **body})
    assert r.status_code == status, r.text
    out: dict[str, Any] = r.json()
    return out


async def deliveries(actor: Actor, webhook_id: int, **params: Any) -> list[dict[str, Any]]:
    r = await actor.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def verified(secret: str, hook: Receiver) -> list[dict[str, Any]]:
    """Every request the receiver got, verified as a receiver would; their payloads."""
    return [Webhook(secret).verify(r.body, r.headers) for r in hook.requests]


async def received(hook: Receiver, n: int) -> None:
    async def count() -> int:
        return hook.count()

    await eventually(count, f"{n} requests reach the receiver", until=lambda c: c >= n)


# --------------------------------------------------------------------------- events


async def test_batch_events_arrive_signed_and_a_receiver_verifies_them(
    alice: Actor, hook: Receiver
) -> None:
    sub = await subscribe(alice, hook.url)
    assert sub["secret"].startswith("whsec_") and sub["events"] is None
    assert sub["status"] == "active" and sub["all_batches"] is False
    assert "secret" not in (await alice.get(f"/api/v1/webhooks/{sub['id']}")).json()

    done = await create(alice, MISSING)  # created, first failure, completed: one commit
    other = await create(alice, {**MISSING, "ids": [900_002, 900_003]})
    await received(hook, 6)
    payloads = verified(sub["secret"], hook)
    by_batch: dict[int, list[str]] = {}
    for p in payloads:
        by_batch.setdefault(p["data"]["id"], []).append(p["type"])
    assert sorted(by_batch[done["id"]]) == ["batch.completed", "batch.created", "batch.failures"]
    assert sorted(by_batch[other["id"]]) == sorted(by_batch[done["id"]])
    completed = next(
        p for p in payloads if p["type"] == "batch.completed" and p["data"]["id"] == done["id"]
    )  # deliveries are sent side by side: the receiver may see either batch's first
    assert completed["data"]["status"] == "completed" and completed["data"]["failed"] == 1
    assert completed["data"]["creator_name"] == "Alice"
    assert set(completed) == {"type", "timestamp", "data"}

    # The same bytes with one character changed: the receiver's check refuses them.
    first = hook.requests[0]
    tampered = first.body.replace(b'"type"', b'"typo"')
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(tampered, first.headers)
    # Each delivery has its own webhook-id.
    assert len({r.headers["webhook-id"] for r in hook.requests}) == 6

    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "every delivery is recorded as delivered",
        until=lambda items: {d["status"] for d in items} == {"delivered"},
    )
    assert len(log) == 6
    assert {d["attempts"] for d in log} == {1} and {d["last_status_code"] for d in log} == {200}


async def test_suspended_resumed_cancelled_and_aborted_arrive(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    hook: Receiver,
) -> None:
    events = ["batch.suspended", "batch.resumed", "batch.cancelled", "batch.aborted"]
    sub = await subscribe(alice, hook.url, events=events)
    setup = await expense_setup(sessionmaker, admin, alice, bob, 30)

    def suspended_batch(ids: list[int]) -> dict[str, Any]:
        return {"type": "task.approve", "ids": ids, "params": APPROVE, "start_suspended": True}

    resumed = await create(alice, suspended_batch(setup.task_ids[:5]))
    r = await alice.post(f"/api/v1/batches/{resumed['id']}/activate")
    assert r.status_code == 200, r.text
    paused = await create(alice, suspended_batch(setup.task_ids[5:10]))
    r = await alice.delete(f"/api/v1/batches/{paused['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    missing = list(range(900_001, 900_041))  # 40 items that fail first: aborted
    aborted = await create(
        alice,
        {
            "type": "task.approve",
            "ids": [*missing, *setup.task_ids[10:]],
            "params": APPROVE,
            "chunk_size": 10,
            "failure_threshold": 0.5,
        },
    )
    assert (await wait_for(alice, aborted["id"]))["status"] == "aborted"
    await received(hook, 5)
    got = [(p["data"]["id"], p["type"]) for p in verified(sub["secret"], hook)]
    assert sorted(got) == sorted(
        [
            (resumed["id"], "batch.suspended"),
            (resumed["id"], "batch.resumed"),
            (paused["id"], "batch.suspended"),
            (paused["id"], "batch.cancelled"),
            (aborted["id"], "batch.aborted"),
        ]
    )


async def test_batch_started_arrives_once_for_an_id_list_and_a_filter_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    hook: Receiver,
) -> None:
    """``batch.started`` comes from the seed job (an id list moves on from ``created``;
    a filter batch starts with its first page), signed like every event, once."""
    sub = await subscribe(alice, hook.url, events=["batch.started"])
    setup = await expense_setup(sessionmaker, admin, alice, bob, 10)
    listed = await create(
        alice, {"type": "task.approve", "ids": setup.task_ids[:5], "params": APPROVE}
    )
    assert (await wait_for(alice, listed["id"]))["status"] == "completed"
    filtered = await create(
        alice,
        {
            "type": "task.approve",
            "filter": {"definition_key": "expense", "node_id": "manager"},
            "params": APPROVE,
        },
    )
    done = await wait_for(alice, filtered["id"])
    assert (done["status"], done["success"]) == ("completed", 5)
    await received(hook, 2)
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "both deliveries are delivered",
        until=lambda items: len(items) == 2 and {d["status"] for d in items} == {"delivered"},
    )
    assert sorted(d["batch_id"] for d in log) == sorted([listed["id"], filtered["id"]])
    payloads = verified(sub["secret"], hook)
    assert len(payloads) == 2 and {p["type"] for p in payloads} == {"batch.started"}
    assert sorted(p["data"]["id"] for p in payloads) == sorted([listed["id"], filtered["id"]])
    status = {p["data"]["id"]: p["data"]["status"] for p in payloads}
    assert all(p["data"]["started_at"] for p in payloads)
    assert status[listed["id"]] in ("seeding", "running")
    # The filter batch's one page was applied as it was seeded: it started and completed
    # in one transaction, and its events show the batch as that commit left it.
    assert status[filtered["id"]] == "completed"


# --------------------------------------------------------------------------- the outbox


async def test_a_failing_receiver_gets_the_same_delivery_until_it_answers_2xx(
    alice: Actor, hook: Receiver, fast_retries: None
) -> None:
    sub = await subscribe(alice, hook.url, events=["batch.completed"])
    hook.codes = [500, 500, 200]
    batch = await create(alice, MISSING)
    await received(hook, 3)
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the delivery is delivered",
        until=lambda items: items and items[0]["status"] == "delivered",
    )
    assert len(log) == 1
    assert log[0]["attempts"] == 3 and log[0]["last_status_code"] == 200
    assert log[0]["batch_id"] == batch["id"] and log[0]["event"] == "batch.completed"
    ids = {r.headers["webhook-id"] for r in hook.requests}
    assert ids == {log[0]["msg_id"]}
    assert len({r.body for r in hook.requests}) == 1  # the same bytes every time
    assert all(p["type"] == "batch.completed" for p in verified(sub["secret"], hook))


async def test_two_workers_taking_the_same_delivery_send_it_once(
    app: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
) -> None:
    """Four jobs woken for one due delivery at the same moment (a duplicate wake-up,
    the cron): one claims the attempt, the others find nothing to send."""
    sub = await subscribe(alice, hook.url)
    async with sessionmaker() as s:
        row = WebhookDelivery(
            subscription_id=sub["id"],
            batch_id=None,
            event="webhook.ping",
            msg_id=outbox.new_msg_id(),
            body=outbox.body_of("webhook.ping", utcnow(), {"subscription_id": sub["id"]}),
            status="pending",
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
        s.add(row)
        await s.commit()
    ctx, _ = recording_context(app)
    await asyncio.gather(*(webhook_service.deliver(ctx, row.id) for _ in range(4)))
    log = await deliveries(alice, sub["id"])
    assert log[0]["status"] == "delivered" and log[0]["attempts"] == 1
    assert hook.count() == 1


async def test_redelivery_is_a_new_attempt_of_the_same_delivery(
    alice: Actor, hook: Receiver
) -> None:
    sub = await subscribe(alice, hook.url)
    r = await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    assert r.status_code == 202, r.text
    ping = r.json()
    assert ping["event"] == "webhook.ping" and ping["batch_id"] is None
    await received(hook, 1)
    await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the ping is delivered",
        until=lambda items: items[0]["status"] == "delivered",
    )
    r = await alice.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{ping['id']}/redeliver")
    assert r.status_code == 202, r.text
    await received(hook, 2)
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the redelivery is delivered",
        until=lambda items: items[0]["attempts"] == 2 and items[0]["status"] == "delivered",
    )
    assert len(log) == 1
    assert [r.headers["webhook-id"] for r in hook.requests] == [ping["msg_id"]] * 2
    assert [p["type"] for p in verified(sub["secret"], hook)] == ["webhook.ping"] * 2


async def test_a_redirect_is_not_followed(alice: Actor, hook: Receiver) -> None:
    sub = await subscribe(alice, hook.url)
    hook.redirect_to = hook.url.replace("/hook", "/elsewhere")
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the attempt is recorded",
        until=lambda items: items[0]["attempts"] == 1 and items[0]["last_status_code"],
    )
    assert log[0]["last_status_code"] == 302 and log[0]["status"] == "pending"
    assert "redirect" in log[0]["last_error"] and log[0]["next_attempt_at"]
    assert [r.path for r in hook.requests] == ["/hook"]


async def test_a_huge_response_is_cut_and_the_status_code_counts(
    alice: Actor, hook: Receiver
) -> None:
    sub = await subscribe(alice, hook.url)
    hook.huge = True
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the ping is delivered",
        until=lambda items: items[0]["status"] == "delivered",
    )
    assert log[0]["last_status_code"] == 200
    assert hook.written < 32 * 1024 * 1024 // 2  # batchd hung up long before the end


async def test_a_rolled_back_state_change_leaves_no_delivery(
    app: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
    hook: Receiver,
) -> None:
    """The outbox row is part of the change's transaction: rolled back, there is no row
    and no wake-up — not even at the session's next commit; committed, there is both."""
    sub = await subscribe(alice, hook.url, events=["batch.cancelled"])
    setup = await expense_setup(sessionmaker, admin, alice, bob, 2)
    batch = await create(
        alice,
        {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE, "start_suspended": True},
    )
    ctx, queue = recording_context(app)

    async def cancelled_rows() -> list[WebhookDelivery]:
        async with sessionmaker() as s:
            rows = await s.scalars(
                select(WebhookDelivery).where(
                    WebhookDelivery.batch_id == batch["id"],
                    WebhookDelivery.event == "batch.cancelled",
                )
            )
            return list(rows)

    with pytest.raises(RuntimeError, match="after the move"):
        async with ctx.unit() as session:
            locked = await state.lock_batch(session, batch["id"])
            assert locked is not None
            state.move(locked, BatchStatus.CANCELLED)
            await session.flush()
            raise RuntimeError("something fails after the move")
    assert await cancelled_rows() == [] and queue.sent == []

    async with sessionmaker() as session:  # rolled back, then the same session commits
        loaded = await session.get(Batch, batch["id"])
        assert loaded is not None
        state.move(loaded, BatchStatus.CANCELLED)
        await session.flush()
        await session.rollback()
        await session.commit()
    assert await cancelled_rows() == []
    assert (await alice.get(f"/api/v1/batches/{batch['id']}")).json()["status"] == "suspended"

    async with ctx.unit() as session:  # the same change committed: its row and wake-up
        locked = await state.lock_batch(session, batch["id"])
        assert locked is not None
        state.move(locked, BatchStatus.CANCELLED)
    rows = await cancelled_rows()
    assert [(r.subscription_id, r.status) for r in rows] == [(sub["id"], "pending")]
    assert [(w.job, w.batch_id) for w in queue.sent] == [(outbox.JOB, rows[0].id)]


def test_the_retry_schedule_is_the_documented_one() -> None:
    """docs/webhooks.md: about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, then every 2 h up to 24 h
    after the first attempt, then ``failed`` — with the module's own constants."""
    assert [webhook_service.backoff(n) for n in range(1, 10)] == [
        5,
        30,
        120,
        600,
        1800,
        3600,
        7200,
        7200,
        7200,
    ]
    first = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
    at, attempts, waits = first, 1, []
    while (delay := webhook_service.retry_delay(attempts, first, at)) is not None:
        waits.append(delay)
        at += timedelta(seconds=delay)
        attempts += 1
    assert waits[:7] == [5, 30, 120, 600, 1800, 3600, 7200]
    assert set(waits[6:]) == {7200}
    assert (at - first) <= timedelta(hours=24) < (at - first) + timedelta(hours=2)
    assert attempts == 18  # 1 + 6 backed-off + 11 two-hourly, the last at 23 h 42 min
    assert webhook_service.retry_delay(attempts, first, at) is None  # the next: past 24 h


@pytest.mark.parametrize("settings_overrides", [{**DEV, "webhook_timeout": 0.5}])
async def test_a_receiver_that_never_answers_is_a_timed_out_attempt(
    alice: Actor, hook: Receiver, settings: Any
) -> None:
    assert settings.webhook_timeout == 0.5
    sub = await subscribe(alice, hook.url)
    hook.hold = threading.Event()  # the request is taken, and never answered
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the attempt is recorded",
        until=lambda items: items[0]["attempts"] == 1 and items[0]["last_error"],
    )
    assert log[0]["last_error"] == "No answer within 0.5 s."
    assert log[0]["last_status_code"] is None and log[0]["status"] == "pending"
    assert log[0]["next_attempt_at"] and hook.held.is_set()


async def test_at_most_64_kib_of_the_answer_is_read(
    hook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every socket read is counted: the head, then the body up to exactly 64 KiB — the
    connection is closed then, not one 64 KiB read later."""
    taken: list[int] = []
    read = delivery_module._CappedStream.read

    async def counted(self: Any, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        data = await read(self, max_bytes, timeout)
        taken.append(len(data))
        return data

    monkeypatch.setattr(delivery_module._CappedStream, "read", counted)
    hook.huge = True
    result = await delivery_module.send(
        hook.url, {"webhook-id": "msg_cap"}, "{}", limit_s=10, allow_private=True
    )
    assert result.delivered and result.status_code == 200
    body_read = sum(taken) - hook.head_len
    assert body_read <= 65_536
    assert body_read == delivery_module.RESPONSE_MAX == 65_536  # the whole cap, no more


async def test_fifty_failed_deliveries_disable_the_subscription_until_re_enabled(
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_service, "GIVE_UP_AFTER_S", 0.0)  # the first failure gives up
    sub = await subscribe(alice, hook.url)
    async with sessionmaker() as s:
        await s.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == sub["id"])
            .values(consecutive_failures=48)
        )
        await s.commit()
    hook.codes = [500, 500]
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    await eventually(
        lambda: deliveries(alice, sub["id"], status="failed"), "the 49th delivery fails"
    )
    r = await alice.get(f"/api/v1/webhooks/{sub['id']}")
    assert r.json()["status"] == "active" and r.json()["consecutive_failures"] == 49
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")

    async def current() -> dict[str, Any]:
        body: dict[str, Any] = (await alice.get(f"/api/v1/webhooks/{sub['id']}")).json()
        return body

    off = await eventually(current, "disabled", until=lambda b: b["status"] == "disabled")
    assert off["consecutive_failures"] == 50 and "50 deliveries" in off["disabled_reason"]
    r = await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    assert r.status_code == 409 and "disabled" in r.json()["detail"]
    await create(alice, MISSING)  # a disabled subscription gets no delivery rows
    assert len(await deliveries(alice, sub["id"])) == 2

    r = await alice.client.patch(
        f"/api/v1/webhooks/{sub['id']}", json={"status": "active"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active" and r.json()["consecutive_failures"] == 0
    assert r.json()["disabled_reason"] is None
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    await eventually(
        lambda: deliveries(alice, sub["id"], status="delivered"), "delivered once re-enabled"
    )


# --------------------------------------------------------------------------- SSRF


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """The resolver answers from ``answers`` (there is no internet in the tests)."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return answers[host]

    monkeypatch.setattr(delivery_module, "resolve", resolve)


@pytest.mark.parametrize("settings_overrides", [{}])
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::1]:8080/hook", "::1"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1"),
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("http://[::]/hook", "::"),
        ("http://224.0.0.1/hook", "224.0.0.1"),
        ("http://[2002:7f00:1::]/hook", "2002:7f00:1::"),  # 6to4 wrapping 127.0.0.1
        ("http://[fec0::1]/hook", "fec0::1"),  # site-local
        ("http://[64:ff9b::a00:1]/hook", "64:ff9b::a00:1"),  # NAT64 of 10.0.0.1
        ("http://100.64.0.1/hook", "100.64.0.1"),  # carrier-grade NAT
        ("http://internal.example/hook", "internal.example resolves to a loopback, private"),
        ("http://split.example/hook", "split.example resolves to a loopback, private"),
        ("ftp://hooks.example/hook", "http:// or https://"),
        ("https://user:pw@hooks.example/hook", "user name or password"),
        ("https://hooks.example/" + "a" * 2000, "at most 2000"),
        ("http://nowhere.example/hook", "does not resolve"),
    ],
)
async def test_private_and_malformed_urls_are_refused(
    alice: Actor, monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    fake_dns(
        monkeypatch,
        {
            "internal.example": ["10.0.0.1"],
            "split.example": ["93.184.216.34", "192.168.1.5"],  # one bad answer is enough
            "hooks.example": ["93.184.216.34"],
        },
    )
    r = await alice.post("/api/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"], r.json()
    # How batchd's own network resolves a name is not the caller's to learn.
    detail = r.json()["detail"]
    assert "10.0.0.1" not in detail and "192.168.1.5" not in detail, detail


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_a_host_that_turns_private_after_subscribing_gets_nothing(
    alice: Actor, hook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"hooks.example": ["93.184.216.34"]}
    fake_dns(monkeypatch, answers)
    sub = await subscribe(alice, "http://hooks.example/hook")
    r = await alice.client.patch(
        f"/api/v1/webhooks/{sub['id']}",
        json={"url": hook.url},
        headers=alice.headers,
    )
    assert r.status_code == 422 and "127.0.0.1" in r.json()["detail"]
    answers["hooks.example"] = ["10.0.0.1"]  # DNS changed: checked again at delivery
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the attempt is recorded",
        until=lambda items: items[0]["attempts"] == 1 and items[0]["last_error"],
    )
    assert "hooks.example resolves to a loopback, private" in log[0]["last_error"]
    assert "10.0.0.1" not in log[0]["last_error"] and log[0]["last_status_code"] is None
    assert log[0]["status"] == "pending"  # retried later, in case DNS changes back
    assert hook.count() == 0


# --------------------------------------------------------------------------- who sees what


async def test_subscriptions_are_their_owners(
    admin: Actor, alice: Actor, bob: Actor, hook: Receiver
) -> None:
    mine = await subscribe(alice, hook.url)
    r = await bob.post("/api/v1/webhooks", json={"url": hook.url, "all_batches": True})
    assert r.status_code == 403
    everything = await subscribe(admin, hook.url, all_batches=True)

    theirs = await create(bob, MISSING)
    ours = await create(alice, MISSING)
    await received(hook, 9)  # alice: 3 of her batch; admin: 3 + 3

    def batches_of(secret: str) -> set[int]:
        found = set()
        for r in hook.requests:
            with contextlib.suppress(WebhookVerificationError):
                found.add(Webhook(secret).verify(r.body, r.headers)["data"]["id"])
        return found

    assert batches_of(mine["secret"]) == {ours["id"]}
    assert batches_of(everything["secret"]) == {ours["id"], theirs["id"]}

    base = f"/api/v1/webhooks/{mine['id']}"
    assert (await bob.get(base)).status_code == 404
    assert (await bob.get(f"{base}/deliveries")).status_code == 404
    r = await bob.client.patch(base, json={"status": "active"}, headers=bob.headers)
    assert r.status_code == 404
    log = await deliveries(alice, mine["id"])
    assert (await bob.post(f"{base}/deliveries/{log[0]['id']}/redeliver")).status_code == 404
    assert (await bob.post(f"{base}/ping")).status_code == 404
    assert (await bob.delete(base)).status_code == 404
    listed = (await bob.get("/api/v1/webhooks")).json()
    assert listed["total"] == 0

    # A batch's page shows the deliveries its viewer may see.
    r = await alice.get(f"/api/v1/batches/{ours['id']}/deliveries")
    assert r.status_code == 200 and r.json()["total"] == 3
    assert {d["subscription_id"] for d in r.json()["items"]} == {mine["id"]}
    r = await admin.get(f"/api/v1/batches/{ours['id']}/deliveries")
    assert r.json()["total"] == 6
    assert (await bob.get(f"/api/v1/batches/{ours['id']}/deliveries")).status_code == 404

    assert (await alice.delete(base)).status_code == 204
    assert (await alice.get(base)).status_code == 404


async def test_unknown_events_are_refused(alice: Actor, hook: Receiver) -> None:
    r = await alice.post("/api/v1/webhooks", json={"url": hook.url, "events": ["batch.exploded"]})
    assert r.status_code == 422
    r = await alice.post("/api/v1/webhooks", json={"url": hook.url, "events": []})
    assert r.status_code == 422


async def test_metrics_show_the_outbox(alice: Actor, hook: Receiver, client: Any) -> None:
    sub = await subscribe(alice, hook.url)
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    await eventually(
        lambda: deliveries(alice, sub["id"], status="delivered"), "the ping is delivered"
    )
    text = (await client.get("/metrics")).text
    assert 'batchd_webhook_deliveries_total{outcome="delivered"}' in text
    assert "batchd_webhook_outbox_backlog 0.0" in text
    assert "batchd_webhook_oldest_pending_seconds 0.0" in text
    assert 'batchd_webhook_subscriptions{status="active"} 1.0' in text
    assert 'batchd_webhook_subscriptions{status="disabled"} 0.0' in text


# --------------------------------------------------------------------------- crash safety


def process_lives(
    settings: Any, monkeypatch: pytest.MonkeyPatch, *forwarded: str
) -> Callable[[], Any]:
    """What a crash test starts, stops and kills: on PostgreSQL a ``batchd worker``
    process (the fixture's app serves the API), on SQLite a ``batchd serve`` (the API and
    the jobs in one process) — each passed the webhook settings the test changed."""
    from tests import serve_proc, workers_proc

    extra = ("webhook_allow_private", *forwarded)
    monkeypatch.setattr(serve_proc, "FORWARDED", (*workers_proc.FORWARDED, *extra))
    monkeypatch.setattr(workers_proc, "FORWARDED", (*workers_proc.FORWARDED, *extra))

    def life() -> Any:
        if ON_POSTGRES:
            return workers_proc.WorkerProcess(settings)
        return serve_proc.ServeProcess(settings)

    return life


CRASH = {**DEV, "webhook_timeout": 1.0}
"""A lost attempt is taken again 1 s + ``LEASE_GRACE_S`` after it was claimed."""


@pytest.mark.external_workers  # the fixture's app only serves the API: the lives run jobs
@pytest.mark.parametrize("settings_overrides", [CRASH])
async def test_killed_mid_delivery_it_is_delivered_after_the_restart(
    settings: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch's change commits, its delivery is in flight (the receiver holds the
    request), the process dies with SIGKILL: the next life sends the same delivery."""
    import httpx

    life = process_lives(settings, monkeypatch, "webhook_timeout")

    sub = await subscribe(alice, hook.url, events=["batch.completed"])
    hook.hold = threading.Event()
    first = life()
    try:
        await first.ready()
        if ON_POSTGRES:
            batch = await create(alice, MISSING)
        else:
            async with httpx.AsyncClient(base_url=first.url) as c:
                r = await c.post("/api/v1/batches", json=MISSING, headers=alice.headers)
                assert r.status_code == 202, r.text
                batch = r.json()

        await eventually(hook.holding, "the receiver holds the first attempt")
        first.kill()
    finally:
        first.stop()
    hook.hold.set()
    second = life()
    try:
        await second.ready()
        await received(hook, 2)
        log = await eventually(
            lambda: deliveries(alice, sub["id"]),
            "delivered by the second life",
            until=lambda items: items and items[0]["status"] == "delivered",
        )
    finally:
        second.stop()
    assert len(log) == 1 and log[0]["batch_id"] == batch["id"] and log[0]["attempts"] == 2
    assert {r.headers["webhook-id"] for r in hook.requests} == {log[0]["msg_id"]}
    assert [p["type"] for p in verified(sub["secret"], hook)] == ["batch.completed"] * 2
    async with sessionmaker() as s:
        rows = (await s.scalars(select(WebhookDelivery))).all()
    assert len(rows) == 1


ONE_SLOT = {**DEV, "worker_max_jobs": 1, "webhook_timeout": 30.0}
"""One job at a time (per priority on arq), and a held attempt keeps its slot for 30 s."""


@pytest.mark.external_workers  # the fixture's app only serves the API: the lives run jobs
@pytest.mark.parametrize("settings_overrides", [ONE_SLOT])
async def test_killed_after_the_commit_before_the_send_it_is_delivered_after_the_restart(
    settings: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch's change commits its delivery rows, and the process dies (SIGKILL)
    before their send job ran — deterministically: its only job slot is taken by a ping
    the receiver holds. The wake-ups die with it (on Redis they are flushed too); the
    next life's cron finds the rows and sends each once, as its first attempt."""
    import httpx

    from tests.conftest import TEST_REDIS

    life = process_lives(settings, monkeypatch, "webhook_timeout", "worker_max_jobs")

    sub = await subscribe(alice, hook.url)
    hook.hold = threading.Event()
    first = life()
    try:
        await first.ready()
        api = alice.client if ON_POSTGRES else httpx.AsyncClient(base_url=first.url)
        r = await api.post(f"/api/v1/webhooks/{sub['id']}/ping", headers=alice.headers)
        assert r.status_code == 202, r.text

        await eventually(hook.holding, "the ping takes the only job slot")
        r = await api.post("/api/v1/batches", json=MISSING, headers=alice.headers)
        assert r.status_code == 202, r.text
        batch = r.json()
        async with sessionmaker() as s:  # committed with the change; nothing attempted
            rows = (
                await s.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.batch_id == batch["id"])
                )
            ).all()
        assert sorted(r.event for r in rows) == [
            "batch.completed",
            "batch.created",
            "batch.failures",
        ]
        assert {(r.status, r.attempts) for r in rows} == {("pending", 0)}
        first.kill()
        assert hook.count() == 1  # the ping only
        if not ON_POSTGRES:
            await api.aclose()
    finally:
        first.stop()
    if ON_POSTGRES:  # the queued wake-ups are lost as well: only the cron can send them
        from redis.asyncio import Redis

        assert TEST_REDIS is not None
        redis = Redis.from_url(TEST_REDIS)
        await redis.flushdb()
        await redis.aclose()
    ids = {r.msg_id for r in rows}
    second = life()
    try:
        await second.ready()

        async def delivered() -> list[WebhookDelivery]:
            async with sessionmaker() as s:
                found = await s.scalars(
                    select(WebhookDelivery).where(WebhookDelivery.batch_id == batch["id"])
                )
                return list(found)

        after = await eventually(
            delivered,
            "the batch's deliveries are delivered by the second life",
            until=lambda found: {d.status for d in found} == {"delivered"},
        )
    finally:
        second.stop()
    assert len(after) == 3 and {d.msg_id for d in after} == ids  # the same rows, no new one
    assert {d.attempts for d in after} == {1}
    sent = [r.headers["webhook-id"] for r in hook.requests if r.headers["webhook-id"] in ids]
    assert sorted(sent) == sorted(ids)  # each exactly once
    batch_payloads = [p for p in verified(sub["secret"], hook) if p["type"] != "webhook.ping"]
    assert sorted(p["type"] for p in batch_payloads) == [
        "batch.completed",
        "batch.created",
        "batch.failures",
    ]


# ------------------------------------------------ admins, redelivery, purge, the guard, the console


def hand_written(subscription_id: int, batch_id: int | None, event: str, **kw: Any) -> Any:
    """A pending delivery row as the outbox writes it (for tests that drive the job by
    hand: no wake-up is sent for it)."""
    now = utcnow()
    values: dict[str, Any] = {
        "subscription_id": subscription_id,
        "batch_id": batch_id,
        "event": event,
        "msg_id": outbox.new_msg_id(),
        "body": outbox.body_of(event, now, {"id": batch_id}),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        **kw,
    }
    return WebhookDelivery(**values)


async def demote(sm: async_sessionmaker[AsyncSession], user_id: int) -> None:
    async with sm() as s:
        await s.execute(update(User).where(User.id == user_id).values(role="user"))
        await s.commit()


async def test_a_demoted_admins_subscription_gets_only_their_own_batches(
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    bob: Actor,
    hook: Receiver,
) -> None:
    """``all_batches`` is read with the owner's role *now*, when the outbox writes."""
    everything = await subscribe(admin, hook.url, all_batches=True, events=["batch.completed"])
    before = await create(bob, MISSING)
    await received(hook, 1)
    await demote(sessionmaker, admin.id)
    after = await create(bob, MISSING)  # its rows, if any, are written by this commit
    own = await create(admin, MISSING)
    async with sessionmaker() as s:
        written = set(
            await s.scalars(
                select(WebhookDelivery.batch_id).where(
                    WebhookDelivery.subscription_id == everything["id"]
                )
            )
        )
    assert written == {before["id"], own["id"]}  # never bob's batch after the demotion
    await received(hook, 2)
    sent = {p["data"]["id"] for p in verified(everything["secret"], hook)}
    assert after["id"] not in sent


@pytest.mark.external_workers  # nothing runs jobs but the test
async def test_a_delivery_written_before_the_demotion_is_not_sent(
    app: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    bob: Actor,
    hook: Receiver,
) -> None:
    """Asked again when an attempt is claimed: a pending delivery of another user's
    batch ends ``failed``, unsent, once its owner is no longer an admin; their own
    batches and pings still go out."""
    everything = await subscribe(admin, hook.url, all_batches=True)
    theirs = await create(bob, MISSING)
    own = await create(admin, MISSING)
    async with sessionmaker() as s:  # written while an admin, demoted in the same breath
        rows = [
            hand_written(everything["id"], theirs["id"], "batch.completed"),
            hand_written(everything["id"], own["id"], "batch.completed"),
        ]
        s.add_all(rows)
        await s.execute(update(User).where(User.id == admin.id).values(role="user"))
        await s.commit()
    ctx, _ = recording_context(app)
    for row in rows:
        await webhook_service.deliver(ctx, row.id)
    async with sessionmaker() as s:
        refused = await s.get(WebhookDelivery, rows[0].id)
        kept = await s.get(WebhookDelivery, rows[1].id)
    assert refused is not None and kept is not None
    assert (refused.status, refused.attempts, refused.last_status_code) == ("failed", 0, None)
    assert refused.last_error is not None and "no longer an admin" in refused.last_error
    assert (kept.status, kept.attempts) == ("delivered", 1)
    assert [r.headers["webhook-id"] for r in hook.requests] == [kept.msg_id]


async def test_patch_events_null_means_every_event_again(alice: Actor, hook: Receiver) -> None:
    sub = await subscribe(alice, hook.url, events=["batch.completed"])
    base = f"/api/v1/webhooks/{sub['id']}"

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await alice.client.patch(base, json=body, headers=alice.headers)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    assert (await patch({"status": "active"}))["events"] == ["batch.completed"]  # untouched
    assert (await patch({"events": None}))["events"] is None
    assert (await alice.get(base)).json()["events"] is None
    assert (await patch({"events": ["batch.aborted"]}))["events"] == ["batch.aborted"]
    await create(alice, MISSING)  # created, failures, completed: none is batch.aborted
    assert await deliveries(alice, sub["id"]) == []
    await patch({"events": None})
    await create(alice, MISSING)
    log = await deliveries(alice, sub["id"])
    assert sorted(d["event"] for d in log) == ["batch.completed", "batch.created", "batch.failures"]


async def test_redelivery_clears_delivered_at(alice: Actor, hook: Receiver) -> None:
    sub = await subscribe(alice, hook.url)
    ping = (await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")).json()
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the ping is delivered",
        until=lambda items: items[0]["delivered_at"],
    )
    first_delivered = log[0]["delivered_at"]
    r = await alice.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{ping['id']}/redeliver")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["delivered_at"] is None
    log = await eventually(
        lambda: deliveries(alice, sub["id"]),
        "the redelivery is delivered",
        until=lambda items: items[0]["attempts"] == 2 and items[0]["delivered_at"],
    )
    assert log[0]["delivered_at"] > first_delivered


@pytest.mark.external_workers  # nothing runs jobs but the test
async def test_an_attempt_in_flight_does_not_overwrite_a_newer_redelivery(
    app: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
) -> None:
    """Attempt 1 is in flight when the owner asks for a redelivery; it then succeeds —
    but its outcome is not recorded over the redelivery, which still goes out."""
    sub = await subscribe(alice, hook.url)
    async with sessionmaker() as s:
        row = hand_written(sub["id"], None, "webhook.ping")
        s.add(row)
        await s.commit()
    hook.hold, hook.answer_late = threading.Event(), True
    ctx, _ = recording_context(app)
    in_flight = asyncio.create_task(webhook_service.deliver(ctx, row.id))

    await eventually(hook.holding, "attempt 1 reaches the receiver")
    async with sessionmaker() as s:  # the redelivery request (its wake-up goes nowhere)
        user = await s.get(User, alice.id)
        assert user is not None
        asked = await webhook_service.redeliver(s, user, sub["id"], row.id)
        await s.commit()
    assert asked.status == "pending" and asked.delivered_at is None
    hook.hold.set()  # attempt 1 is answered 200 now
    await in_flight
    async with sessionmaker() as s:
        after = await s.get(WebhookDelivery, row.id)
        assert after is not None
        assert (after.status, after.attempts, after.delivered_at) == ("pending", 1, None)
        assert after.next_attempt_at is not None and after.next_attempt_at <= utcnow()
    await webhook_service.deliver(ctx, row.id)  # the redelivery's attempt
    log = await deliveries(alice, sub["id"])
    assert (log[0]["status"], log[0]["attempts"]) == ("delivered", 2)
    assert hook.count() == 2


async def test_purge_deletes_old_finished_deliveries_only(
    app: Any,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
    hook: Receiver,
    settings: Any,
) -> None:
    from app.batches.recovery import purge

    sub = await subscribe(alice, hook.url)
    old = utcnow() - timedelta(seconds=settings.history_ttl + 3600)
    recent = utcnow() - timedelta(seconds=settings.history_ttl - 3600)
    rows = {
        "old delivered": dict(status="delivered", created_at=old, delivered_at=old),
        "old given up": dict(status="failed", created_at=old, next_attempt_at=None),
        "old pending": dict(
            status="pending", created_at=old, next_attempt_at=utcnow() + timedelta(hours=1)
        ),
        "recent delivered": dict(status="delivered", created_at=recent, delivered_at=recent),
        "old, redelivered lately": dict(status="delivered", created_at=old, delivered_at=recent),
    }
    ids: dict[str, int] = {}
    async with sessionmaker() as s:
        made = {
            what: hand_written(sub["id"], None, "webhook.ping", **kw) for what, kw in rows.items()
        }
        s.add_all(made.values())
        await s.commit()
        ids = {what: r.id for what, r in made.items()}
    ctx, _ = recording_context(app)
    await purge(ctx)
    async with sessionmaker() as s:
        left = set(await s.scalars(select(WebhookDelivery.id)))
    assert left == {ids["old pending"], ids["recent delivered"], ids["old, redelivered lately"]}


@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "fec0::1",  # site-local (deprecated)
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:93.184.216.34",  # IPv4-mapped, even of a public address
        "::7f00:1",  # IPv4-compatible
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::5db8:d822",  # local-use NAT64
        "2001::1",  # Teredo
        "2001:db8::1",  # documentation
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "127.0.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "192.0.0.1",
        "192.0.2.1",
        "192.168.1.1",
        "198.18.0.1",  # benchmarking
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_the_guard_refuses_every_non_public_address(address: str) -> None:
    assert delivery_module.forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "100.128.0.1",  # just past carrier-grade NAT
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    ],
)
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert not delivery_module.forbidden(ipaddress.ip_address(address))


def test_the_console_links_to_the_create_webhook_operation() -> None:
    """The Webhooks page's API link is Swagger UI's deep link of the real operation."""
    from app.config import Settings
    from app.main import create_app

    api = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"), run_jobs=False)
    operation = api.openapi()["paths"]["/api/v1/webhooks"]["post"]
    page = Path(__file__).resolve().parent.parent / "app" / "web" / "templates" / "webhooks.html"
    links = re.findall(r'href="(/docs#[^"]*)"', page.read_text())
    assert links == [f"/docs#/{operation['tags'][0]}/{operation['operationId']}"]
    assert links == ["/docs#/webhooks/create_webhook"]


# --------------------------------------------------------------------------- CLI


async def test_cli_adds_lists_shows_deliveries_and_redelivers(
    live_server: Any, alice: Actor, bob: Actor, hook: Receiver
) -> None:
    from tests.test_cli_client import batchd

    url = live_server.url
    added = await batchd(
        url, alice.token, "webhook", "add", hook.url, "--event", "batch.completed", "--json"
    )
    assert added.code == 0, added.err
    sub = added.json
    assert sub["events"] == ["batch.completed"] and sub["secret"].startswith("whsec_")
    plain = await batchd(url, alice.token, "webhook", "add", hook.url)
    assert plain.code == 0 and "secret: whsec_" in plain.out and "shown only now" in plain.err
    refused = await batchd(url, alice.token, "webhook", "add", hook.url, "--all-batches")
    assert refused.code == 3 and "admin" in refused.err
    bad = await batchd(url, alice.token, "webhook", "add", hook.url, "--event", "batch.exploded")
    assert bad.code == 3

    listed = await batchd(url, alice.token, "webhook", "list", "--json")
    assert listed.code == 0 and listed.json["total"] == 2
    table = await batchd(url, alice.token, "webhook", "list")
    assert table.code == 0 and hook.url in table.out and "batch.completed" in table.out

    import httpx

    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/api/v1/batches", json=MISSING, headers=alice.headers)
        assert r.status_code == 202, r.text
    await received(hook, 4)  # the first: completed; the second: created, failures, completed

    async def log() -> Any:
        out = await batchd(url, alice.token, "webhook", "deliveries", str(sub["id"]), "--json")
        assert out.code == 0, out.err
        return out.json

    page = await eventually(
        log, "delivered", until=lambda p: p["total"] == 1 and p["items"][0]["status"] == "delivered"
    )
    shown = await batchd(url, alice.token, "webhook", "deliveries", str(sub["id"]))
    assert shown.code == 0 and "batch.completed" in shown.out and "delivered" in shown.out
    delivery = page["items"][0]["id"]
    again = await batchd(url, alice.token, "webhook", "redeliver", str(sub["id"]), str(delivery))
    assert again.code == 0 and "queued" in again.out
    await received(hook, 5)
    assert hook.requests[-1].headers["webhook-id"] == page["items"][0]["msg_id"]
    other = await batchd(url, bob.token, "webhook", "redeliver", str(sub["id"]), str(delivery))
    assert other.code == 3 and "does not exist" in other.err


# --------------------------------------------------------------------------- console


async def test_console_adds_a_webhook_shows_the_secret_once_and_tests_it(
    console: Console,  # noqa: F811 - the fixture imported above
    alice: Actor,
    hook: Receiver,
) -> None:
    from playwright.async_api import expect

    page = await console.page()
    await console.sign_in(page, alice.token, "/webhooks")
    await page.fill("#webhook-form input[name=url]", hook.url)
    await page.check("#webhook-form input[value='batch.completed']")
    await page.click("#webhook-form button[type=submit]")
    await expect(page.locator("#new-secret")).to_be_visible()
    secret = await page.locator("#new-secret-value").text_content()
    assert secret and secret.startswith("whsec_")
    card = page.locator("article.webhook")
    await expect(card).to_contain_text(hook.url)
    await expect(card).to_contain_text("batch.completed")

    await card.locator("button[data-action=ping]").click()
    await received(hook, 1)
    Webhook(secret).verify(hook.requests[0].body, hook.requests[0].headers)

    await page.reload()
    await expect(page.locator("article.webhook")).to_contain_text(hook.url)
    assert secret not in await page.content()  # shown once
    await page.locator("article.webhook button[data-action=disable]").click()
    await expect(page.locator("article.webhook[data-status=disabled]")).to_be_visible()
    await page.locator("article.webhook button[data-action=enable]").click()
    await expect(page.locator("article.webhook[data-status=active]")).to_be_visible()
    await expect(page.locator("article.webhook")).to_contain_text("webhook.ping")
    batch = await create(alice, MISSING)
    await received(hook, 2)  # its batch.completed
    await page.goto(console.url(f"/batches/{batch['id']}"))
    deliveries_section = page.locator("#webhook-deliveries")
    await expect(deliveries_section).to_be_visible()
    await expect(deliveries_section).to_contain_text("batch.completed")
    await page.goto(console.url("/webhooks"))
    page.once("dialog", lambda dialog: dialog.accept())
    await page.locator("article.webhook button[data-action=delete]").click()
    await expect(page.locator("#webhook-summary")).to_have_text("No webhooks yet.")
    console.check_clean(alice.token)


async def test_the_request_goes_to_the_address_checked_with_the_name_as_host(
    alice: Actor, hook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resolution per attempt, and the connection goes to that address: the name
    only travels in the Host header (and SNI for https)."""
    port = hook.url.split(":")[2].split("/")[0]
    lookups: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(delivery_module, "resolve", resolve)
    sub = await subscribe(alice, f"http://receiver.example:{port}/hook")
    await alice.post(f"/api/v1/webhooks/{sub['id']}/ping")
    await received(hook, 1)
    assert hook.requests[0].headers["host"] == f"receiver.example:{port}"
    assert lookups == ["receiver.example", "receiver.example"]  # create, then the attempt
