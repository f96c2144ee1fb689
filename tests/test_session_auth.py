"""Browser sign-in: a server-side session named by an HttpOnly cookie (an EventSource
cannot send headers; the console never puts a token in a URL), with CSRF protection for
state-changing requests; signing out or expiring ends the session on the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.models import Batch
from tests.batch_helpers import eventually, expense_setup
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

        async def connected() -> int:
            if listening.done():
                listening.result()  # a stream that failed fails here
            return len(events)

        await eventually(connected, "the stream sends the current state")  # it is connected
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


# --------------------------------------------------------------------------- server side


@asynccontextmanager
async def _browser(
    app: FastAPI, cookies: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A client with its own cookie jar: one browser (``cookies``: a copied cookie)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", cookies=cookies
    ) as browser:
        yield browser


async def _me(browser: httpx.AsyncClient) -> int:
    return (await browser.get("/api/v1/users/me")).status_code


async def test_signing_out_refuses_a_copied_cookie(app: FastAPI, alice: Actor) -> None:
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, alice.token)
        copied = dict(browser.cookies)
        assert await _me(browser) == 200
        r = await browser.delete("/api/v1/session")
        assert r.status_code == 204
        assert await _me(browser) == 401

    async with _browser(app, copied) as thief:
        r = await thief.get("/api/v1/users/me")
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
        assert "sign in again" in r.json()["detail"]
        r = await thief.delete("/api/v1/batches/424242", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 401
        r = await thief.get("/tasks")  # a console page sends it to sign in
        assert r.status_code == 303 and r.headers["location"].startswith("/sign-in")
        assert (await thief.delete("/api/v1/session")).status_code == 204  # no error twice
    assert (await alice.get("/api/v1/users/me")).status_code == 200  # the token lives on


async def test_the_cookie_is_a_session_not_the_token(app: FastAPI, alice: Actor) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, alice.token)
        secret = browser.cookies["batchd_session"]
    assert secret != alice.token and alice.token not in secret
    r = await alice.client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401  # the session secret is no bearer token
    async with _browser(app, {"batchd_session": alice.token}) as forged:
        assert await _me(forged) == 401  # and a token is no session


async def test_the_csrf_token_belongs_to_its_session(app: FastAPI, alice: Actor) -> None:
    """Matching a CSRF cookie is not enough (a cookie can be planted): the header must
    be the token issued with this session."""
    async with _browser(app) as first, _browser(app) as second:
        await _sign_in(first, alice.token)
        other = await _sign_in(second, alice.token)
        own = first.cookies["batchd_csrf"]
        r = await first.delete("/api/v1/batches/424242", headers={"X-CSRF-Token": other})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
        planted = {"batchd_session": first.cookies["batchd_session"], "batchd_csrf": "planted"}
        async with _browser(app, planted) as forged:
            r = await forged.delete("/api/v1/batches/424242", headers={"X-CSRF-Token": "planted"})
            assert r.status_code == 403
        r = await first.delete("/api/v1/batches/424242", headers={"X-CSRF-Token": own})
        assert r.status_code == 404  # authenticated: the batch just does not exist


async def test_signing_in_again_ends_the_previous_session(app: FastAPI, alice: Actor) -> None:
    async with _browser(app) as browser:
        await _sign_in(browser, alice.token)
        first = dict(browser.cookies)
        await _sign_in(browser, alice.token)
        assert await _me(browser) == 200
    async with _browser(app, first) as old:
        assert await _me(old) == 401


async def test_an_idle_session_is_refused(app: FastAPI, settings: Settings, alice: Actor) -> None:
    assert settings.session_idle_timeout == 3600  # the default: an hour
    async with _browser(app) as browser:
        await _sign_in(browser, alice.token)
        assert await _me(browser) == 200
        settings.session_idle_timeout = 1e-6  # the session has now been idle for longer
        r = await browser.get("/api/v1/users/me")
        assert r.status_code == 401 and "sign in again" in r.json()["detail"]
        assert (await browser.get("/batches")).status_code == 303
    assert (await alice.get("/api/v1/users/me")).status_code == 200  # tokens do not idle


async def test_a_session_is_refused_after_its_max_age(
    app: FastAPI, settings: Settings, alice: Actor
) -> None:
    assert settings.session_max_age == 12 * 3600  # the default: a working day
    async with _browser(app) as browser:
        await _sign_in(browser, alice.token)
        assert await _me(browser) == 200  # just used: not idle
        settings.session_max_age = 1e-6  # older than that, however busy
        assert await _me(browser) == 401
        await _sign_in(browser, alice.token)  # signing in again is the way back
        settings.session_max_age = 3600
        assert await _me(browser) == 200
