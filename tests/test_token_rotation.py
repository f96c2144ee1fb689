"""Rotating a bearer token: ``POST /api/v1/users/me/token`` (one's own) and
``POST /api/v1/users/{id}/token`` (an admin, anyone's). The new token is shown once;
the old one and every browser session of that user are refused at once."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import ActionLog
from tests.conftest import Actor
from tests.test_session_auth import _browser, _me, _sign_in

TOKEN = re.compile(r"^bd_[A-Za-z0-9_\-]{20,}$")


async def _status(client: httpx.AsyncClient, token: str) -> int:
    r = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


def _new_token(r: httpx.Response) -> str:
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"token"} and TOKEN.match(body["token"]), body
    token: str = body["token"]
    return token


async def test_rotating_my_token_refuses_the_old_one_and_my_sessions(
    app: FastAPI, client: httpx.AsyncClient, alice: Actor, bob: Actor
) -> None:
    async with _browser(app) as laptop, _browser(app) as phone, _browser(app) as bobs:
        for browser, actor in ((laptop, alice), (phone, alice), (bobs, bob)):
            await _sign_in(browser, actor.token)

        new = _new_token(await alice.post("/api/v1/users/me/token"))

        assert new != alice.token
        assert await _status(client, alice.token) == 401
        assert (await laptop.get("/api/v1/users/me")).status_code == 401
        assert await _me(phone) == 401
        r = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {new}"})
        assert r.status_code == 200 and r.json()["id"] == alice.id
        # Nobody else is touched.
        assert await _status(client, bob.token) == 200 and await _me(bobs) == 200

        # The new token rotates in turn; a browser signs in with it.
        newer = _new_token(
            await client.post("/api/v1/users/me/token", headers={"Authorization": f"Bearer {new}"})
        )
        assert await _status(client, new) == 401 and await _status(client, newer) == 200
        await _sign_in(laptop, newer)
        assert await _me(laptop) == 200


async def test_an_admin_rotates_anyones_token(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: Actor,
    alice: Actor,
    bob: Actor,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with _browser(app) as alices, _browser(app) as admins:
        await _sign_in(alices, alice.token)
        await _sign_in(admins, admin.token)

        new = _new_token(await admin.post(f"/api/v1/users/{alice.id}/token"))

        assert await _status(client, alice.token) == 401 and await _me(alices) == 401
        r = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {new}"})
        assert r.status_code == 200 and r.json()["id"] == alice.id
        assert await _status(client, admin.token) == 200 and await _me(admins) == 200
        assert await _status(client, bob.token) == 200

    r = await admin.post("/api/v1/users/999999/token")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    async with sessionmaker() as s:
        logged = (
            await s.scalars(select(ActionLog).where(ActionLog.action == "user.token_rotated"))
        ).all()
    assert [(a.user_id, a.detail["user_id"], a.detail["sessions_ended"]) for a in logged] == [
        (admin.id, alice.id, 1)
    ]


async def test_a_user_cannot_rotate_someone_elses_token(
    client: httpx.AsyncClient, alice: Actor, bob: Actor
) -> None:
    for target in (bob.id, 999999, alice.id):  # another user, nobody, or by the admin path
        r = await alice.post(f"/api/v1/users/{target}/token")
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", target
    assert await _status(client, bob.token) == 200
    assert await _status(client, alice.token) == 200
    assert (await client.post("/api/v1/users/me/token")).status_code == 401


async def test_a_browser_rotates_with_its_csrf_token_and_is_signed_out(
    app: FastAPI, client: httpx.AsyncClient, alice: Actor
) -> None:
    async with _browser(app) as browser:
        csrf = await _sign_in(browser, alice.token)
        r = await browser.post("/api/v1/users/me/token")  # the cookie alone: refused
        assert r.status_code == 403
        assert await _status(client, alice.token) == 200

        new = _new_token(
            await browser.post("/api/v1/users/me/token", headers={"X-CSRF-Token": csrf})
        )
        assert await _me(browser) == 401
        assert await _status(client, alice.token) == 401
        assert await _status(client, new) == 200
