"""Browser sign-in: the bearer token in an HttpOnly cookie (an EventSource cannot send
headers; the console never puts a token in a URL), with CSRF protection for
state-changing requests."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import Batch
from tests.batch_helpers import expense_setup
from tests.conftest import Actor, LiveServer
from tests.test_events import sse_events

APPROVE = {"decision": "approve", "form_data": {"category": "travel"}}


async def _sign_in(client: httpx.AsyncClient, token: str) -> str:
    r = await client.post("/api/v1/session", json={"token": token})
    assert r.status_code == 200, r.text
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    csrf: str = r.json()["csrf_token"]
    return csrf


async def test_a_signed_in_browser_reads_and_writes_with_the_csrf_token(
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
    bob: Actor,
) -> None:
    setup = await expense_setup(sessionmaker, admin, alice, bob, 3)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as browser:
        r = await browser.get("/api/v1/users/me")
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
        csrf = await _sign_in(browser, alice.token)
        me = await browser.get("/api/v1/users/me")
        assert me.status_code == 200 and me.json()["id"] == alice.id

        body = {"type": "task.approve", "ids": setup.task_ids, "params": APPROVE}
        r = await browser.post("/api/v1/batches", json=body)  # the cookie alone: refused
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
        r = await browser.post("/api/v1/batches", json=body, headers={"X-CSRF-Token": "x" + csrf})
        assert r.status_code == 403
        async with sessionmaker() as s:
            assert await s.scalar(select(func.count()).select_from(Batch)) == 0
        r = await browser.post(
            "/api/v1/batches",
            json={**body, "start_suspended": True},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 202, r.text
        batch_id = r.json()["id"]

        # what an EventSource does: a GET with the cookie, no Authorization header
        events: list[dict[str, object]] = []

        async def listen() -> None:
            async with browser.stream("GET", f"/api/v1/batches/{batch_id}/events") as stream:
                assert stream.status_code == 200
                async for event in sse_events(stream):
                    events.append(event)

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        r = await browser.post(
            f"/api/v1/batches/{batch_id}/activate", headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 200, r.text
        await asyncio.wait_for(listening, 60)
        ends = [e for e in events if e["event"] == "end"]
        assert len(ends) == 1 and ends[0]["data"]["status"] == "completed"  # type: ignore[index]

        # a bearer header still wins over the cookie, and signing out ends the session
        r = await browser.get("/api/v1/users/me", headers=bob.headers)
        assert r.json()["id"] == bob.id
        r = await browser.delete("/api/v1/session")
        assert r.status_code == 204
        assert (await browser.get("/api/v1/users/me")).status_code == 401


async def test_sign_in_refuses_bad_tokens_and_foreign_origins(
    live_server: LiveServer, alice: Actor
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as browser:
        r = await browser.post("/api/v1/session", json={"token": "bd_nope"})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        r = await browser.post(
            "/api/v1/session",
            json={"token": alice.token},
            headers={"Origin": "https://evil.example"},
        )
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = await browser.post("/api/v1/session", json={"token": alice.token, "extra": 1})
        assert r.status_code == 422
