"""Webhooks: signed deliveries a real receiver verifies with ``standardwebhooks``, the
outbox (one row per event, retries with the same ``webhook-id``, delivery after a
crash), the SSRF guard, isolation between users, auto-disable, the delivery log, CLI."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.models import WebhookDelivery, WebhookSubscription
from app.webhooks import delivery as delivery_module
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
    import asyncio

    from app.db.base import utcnow
    from app.webhooks import outbox

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

    from tests import serve_proc, workers_proc

    extra = ("webhook_allow_private", "webhook_timeout")
    monkeypatch.setattr(serve_proc, "FORWARDED", (*workers_proc.FORWARDED, *extra))
    monkeypatch.setattr(workers_proc, "FORWARDED", (*workers_proc.FORWARDED, *extra))

    def life() -> Any:
        if ON_POSTGRES:
            return workers_proc.WorkerProcess(settings)  # the API is the fixture's app
        return serve_proc.ServeProcess(settings)

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

        async def held() -> bool:
            return hook.held.is_set()

        await eventually(held, "the receiver holds the first attempt")
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
