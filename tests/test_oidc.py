"""Single sign-on against a real OpenID provider the project does not write (panva's
``oidc-provider``, started once for the module by ``tests/oidc_provider.py``).

What a user sees: the provider's access and ID tokens work on the API, as a JWT in the
CLI too; the user is created once by (issuer, sub) and takes role, department and name
from the token at every request (made admin at the provider: may create users; demoted:
may not, at the next request — even when that request is refused — and an older token
cannot make them admin again). Single-sign-on users get no bd_ token. Every hostile
token is a 401 with the usual error shape, the same sentence, and no user row. Unknown
key ids refetch the provider's keys at most once a minute however many arrive at once;
keys are refreshed after an hour, discovery at most once a minute. With the provider
down, a token whose key is cached still works and the console says the provider cannot
be reached. The console's code flow (PKCE, state, nonce) signs in and out, over HTTP and
in Chromium; its session ends with the ID token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auth.identities import department_of, name_of, role_of
from app.auth.oidc import INVALID, InvalidToken, OidcProvider
from app.main import create_app
from app.models import BrowserSession, User
from app.workflow.users import create_user
from tests.batch_helpers import eventually
from tests.conftest import Actor, LiveServer, make_settings
from tests.oidc_provider import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    KID,
    OpenIdProvider,
    b64,
    new_key,
    openid_provider,
    provider_without_end_session,
    public_jwk,
    require_node,
)
from tests.test_cli_client import batchd
from tests.tooling import missing_tool

__all__ = ["openid_provider", "provider_without_end_session"]  # the module's fixtures


@pytest.fixture
def settings_overrides(
    request: pytest.FixtureRequest, openid_provider: OpenIdProvider
) -> dict[str, Any]:
    """batchd configured for the module's provider; parametrized indirectly with
    ``"no end session"`` for the provider without an end-session endpoint, or with a
    dict of more settings."""
    variant = getattr(request, "param", None)
    provider = openid_provider
    if variant == "no end session":
        provider = request.getfixturevalue("provider_without_end_session")
    return {
        "oidc_issuer": provider.issuer,
        "oidc_audience": AUDIENCE,
        "oidc_client_id": CLIENT_ID,
        "oidc_client_secret": CLIENT_SECRET,
        **(variant if isinstance(variant, dict) else {}),
    }


async def user_count(sm: async_sessionmaker[AsyncSession]) -> int:
    async with sm() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


def refused(r: httpx.Response) -> bool:
    return r.status_code == 401 and r.json() == {"error": "Unauthorized", "detail": INVALID}


async def stored_user(
    sm: async_sessionmaker[AsyncSession], issuer: str, subject: str
) -> User | None:
    """The user row of (issuer, sub) as the database holds it now."""
    async with sm() as session:
        found: User | None = await session.scalar(
            select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
        )
        return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- the API


async def test_the_providers_access_and_id_tokens_work_on_the_api(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
) -> None:
    openid_provider.set_account("carol", name="Carol SSO", batchd_role="user", department_id=10)
    before = await user_count(sessionmaker)
    tokens = await openid_provider.tokens("carol")

    r = await me(client, tokens.access_token)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in ("name", "role", "department_id")} == {
        "name": "Carol SSO",
        "role": "user",
        "department_id": 10,
    }
    r2 = await me(client, tokens.id_token)  # aud = the console's client id
    assert r2.status_code == 200 and r2.json()["id"] == r.json()["id"]
    assert await user_count(sessionmaker) == before + 1  # found by (issuer, sub) the 2nd time

    async with sessionmaker() as session:
        user = await session.get(User, r.json()["id"])
        assert user is not None
        assert (user.oidc_issuer, user.oidc_subject) == (openid_provider.issuer, "carol")
    # bd_ tokens work exactly as before, beside JWTs.
    assert (await alice.get("/api/v1/users/me")).json()["id"] == alice.id


async def test_the_role_follows_the_provider_at_the_next_request(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    openid_provider.set_account("dave", name="Dave", batchd_role="admin", department_id="7")
    admin_token = (await openid_provider.tokens("dave")).access_token
    new_user = {"name": "Made by SSO admin"}
    r = await client.post(
        "/api/v1/users", json=new_user, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert r.status_code == 201, r.text
    assert (await me(client, admin_token)).json()["department_id"] == 7

    openid_provider.set_account("dave", name="Dave", batchd_role="auditor")  # not "admin"
    user_token = (await openid_provider.tokens("dave")).access_token
    r = await client.post(
        "/api/v1/users", json=new_user, headers={"Authorization": f"Bearer {user_token}"}
    )
    assert r.status_code == 403, r.text
    # The refused request rolled back, but the demotion had been committed before it:
    # nothing the user holds (a console session, another token) is admin any more.
    demoted = await stored_user(sessionmaker, openid_provider.issuer, "dave")
    assert demoted is not None and (demoted.role, demoted.department_id) == ("user", None)
    assert (await me(client, user_token)).json()["role"] == "user"
    assert (await me(client, user_token)).json()["department_id"] is None


async def test_an_older_token_does_not_restore_a_removed_role(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    p, now = openid_provider, int(time.time())
    admin_then = p.sign(p.claims("olga", iat=now - 120, batchd_role="admin", name="Olga A"))
    user_now = p.sign(p.claims("olga", iat=now - 60, batchd_role="user", name="Olga"))
    new_user = {"name": "Made by an old token"}

    r = await client.post("/api/v1/users", json=new_user, headers=bearer(admin_then))
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/users", json=new_user, headers=bearer(user_now))
    assert r.status_code == 403, r.text
    # The admin token is still valid (exp in 5 min): it authenticates, but its claims
    # are older than the ones applied, so they change nothing.
    r = await me(client, admin_then)
    assert r.status_code == 200 and (r.json()["role"], r.json()["name"]) == ("user", "Olga")
    r = await client.post("/api/v1/users", json=new_user, headers=bearer(admin_then))
    assert r.status_code == 403, r.text
    # A token without iat counts as older than any that had one.
    no_iat = p.sign(p.claims("olga", iat=None, batchd_role="admin"))
    assert (await me(client, no_iat)).json()["role"] == "user"
    stored = await stored_user(sessionmaker, p.issuer, "olga")
    assert stored is not None and (stored.role, stored.oidc_claims_iat) == ("user", now - 60)
    # A newer token from the provider (made admin again) applies at once.
    admin_again = p.sign(p.claims("olga", iat=now, batchd_role="admin"))
    r = await client.post("/api/v1/users", json=new_user, headers=bearer(admin_again))
    assert r.status_code == 201, r.text
    stored = await stored_user(sessionmaker, p.issuer, "olga")
    assert stored is not None and (stored.role, stored.oidc_claims_iat) == ("admin", now)


async def test_single_sign_on_users_get_no_bd_token(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    admin: Actor,
    alice: Actor,
) -> None:
    openid_provider.set_account("pia", name="Pia", batchd_role="admin")
    token = (await openid_provider.tokens("pia")).access_token
    pia = (await me(client, token)).json()
    async with sessionmaker() as session:
        before = await session.get(User, pia["id"])
        assert before is not None
        hash_before = before.token_hash

    r = await client.post("/api/v1/users/me/token", headers=bearer(token))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "Forbidden"
    assert "sign in with the provider" in r.json()["detail"]
    assert "You sign in through the single sign-on provider" in r.json()["detail"]
    r = await client.post(f"/api/v1/users/{pia['id']}/token", headers=bearer(token))
    assert r.status_code == 403, r.text  # an SSO admin, for themselves by id
    r = await admin.post(f"/api/v1/users/{pia['id']}/token")
    assert r.status_code == 403, r.text  # a bd_ admin, for an SSO user
    assert f"User {pia['id']} signs in through the single sign-on provider" in r.json()["detail"]
    async with sessionmaker() as session:
        after = await session.get(User, pia["id"])
        assert after is not None and after.token_hash == hash_before
    # Service users (made with a bd_ token) are as before, even by an SSO admin.
    r = await client.post(f"/api/v1/users/{alice.id}/token", headers=bearer(token))
    assert r.status_code == 201 and r.json()["token"].startswith("bd_")


def hostile_tokens(p: OpenIdProvider, real: str) -> dict[str, str]:
    """Each a token batchd must refuse; ``real`` is a genuine access token."""
    attacker = new_key()
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered = b64(json.dumps({**claims, "batchd_role": "admin"}).encode())
    pem = p.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    hs_body = b64(json.dumps(p.claims("mallory", batchd_role="admin")).encode())
    hs_sig = b64(hmac.new(pem, f"{hs_head}.{hs_body}".encode(), hashlib.sha256).digest())
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": KID}).encode())
    return {
        "alg none": f"{none_head}.{hs_body}.",
        "HS256 with the provider's public key as secret": f"{hs_head}.{hs_body}.{hs_sig}",
        "expired (beyond the 60 s leeway)": p.sign(
            p.claims("mallory", exp=int(claims["iat"]) - 120)
        ),
        "not yet valid (nbf in 5 min)": p.sign(p.claims("mallory", nbf=int(claims["iat"]) + 300)),
        "wrong aud": p.sign(p.claims("mallory", aud="https://other.example/api")),
        "wrong iss": p.sign(p.claims("mallory", iss="https://evil.example")),
        "no sub": p.sign(p.claims("mallory", sub=None)),
        "payload changed after signing": f"{header}.{tampered}.{signature}",
        "unknown kid (attacker key)": p.sign(p.claims("mallory"), key=attacker, kid="attacker"),
        "provider's kid, attacker's key": p.sign(p.claims("mallory"), key=attacker),
        "admin claim from an untrusted issuer": p.sign(
            p.claims("mallory", iss="https://evil.example", batchd_role="admin"),
            key=attacker,
            kid="evil-1",
        ),
        "embedded jwk header (attacker's key, its own kid)": p.sign(
            p.claims("mallory", batchd_role="admin"),
            key=attacker,
            kid="attacker-jwk",
            headers={"jwk": public_jwk(attacker, "attacker-jwk")},
        ),
        "embedded jwk header under the provider's kid": p.sign(
            p.claims("mallory", batchd_role="admin"),
            key=attacker,
            headers={"jwk": public_jwk(attacker, KID)},
        ),
        "no kid (attacker's key)": p.sign(
            p.claims("mallory", batchd_role="admin"), key=attacker, kid=None
        ),
        "jku header naming the attacker's key set": p.sign(
            p.claims("mallory", batchd_role="admin"),
            key=attacker,
            kid="attacker-jku",
            headers={"jku": "https://evil.example/jwks.json"},
        ),
        "garbage with two dots": "not.a.jwt",
    }


async def test_hostile_tokens_are_401_and_provision_nothing(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    openid_provider.set_account("erin", name="Erin", batchd_role="user")
    real = (await openid_provider.tokens("erin")).access_token
    assert (await me(client, real)).status_code == 200
    before = await user_count(sessionmaker)
    results = {}
    for case, token in hostile_tokens(openid_provider, real).items():
        r = await me(client, token)
        results[case] = (r.status_code, r.json())
    assert {c: refused_pair for c, refused_pair in results.items() if refused_pair[0] != 401} == {}
    assert all(
        body == {"error": "Unauthorized", "detail": INVALID} for _s, body in results.values()
    )
    assert await user_count(sessionmaker) == before

    # Within the leeway is still fine: 30 s past exp, 30 s before nbf.
    now = int(json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "==="))["iat"])
    near = openid_provider.sign(openid_provider.claims("erin", exp=now - 30, nbf=now + 30))
    assert (await me(client, near)).status_code == 200


async def test_unknown_key_ids_refetch_the_keys_at_most_once_a_minute(
    openid_provider: OpenIdProvider,
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = [1000.0]
    app.state.oidc = OidcProvider(openid_provider.issuer, clock=lambda: now[0])
    openid_provider.set_account("frank", name="Frank")
    real = (await openid_provider.tokens("frank")).access_token
    start = await openid_provider.jwks_requests()
    assert (await me(client, real)).status_code == 200  # first use: one fetch
    assert await openid_provider.jwks_requests() == start + 1
    before = await user_count(sessionmaker)

    attacker = new_key()
    forged = [
        openid_provider.sign(openid_provider.claims("mallory"), key=attacker, kid=f"forged-{i}")
        for i in range(101)
    ]
    now[0] += 61  # a minute later: a refetch is due, and 100 unknown kids arrive at once
    answers = await asyncio.gather(*(me(client, t) for t in forged[1:]))
    assert all(refused(r) for r in answers)
    assert await openid_provider.jwks_requests() == start + 2  # one refetch for all 100
    assert refused(await me(client, forged[0]))
    assert await openid_provider.jwks_requests() == start + 2  # none more within the minute
    assert (await me(client, real)).status_code == 200  # the known key: no fetch
    now[0] += 61
    assert refused(await me(client, forged[5]))
    assert await openid_provider.jwks_requests() == start + 3
    # Cached keys get old: an hour after the last fetch, the next use refreshes them once.
    now[0] += 3600
    answers = await asyncio.gather(*(me(client, real) for _ in range(20)))
    assert all(r.status_code == 200 for r in answers)
    assert await openid_provider.jwks_requests() == start + 4
    assert await user_count(sessionmaker) == before


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_without_an_issuer_a_jwt_is_401_and_nothing_changes(
    openid_provider: OpenIdProvider,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    alice: Actor,
) -> None:
    before = await user_count(sessionmaker)
    token = openid_provider.sign(openid_provider.claims("gina", batchd_role="admin"))
    r = await me(client, token)
    assert refused(r)  # the sentence of any unknown token: nothing said about SSO
    assert r.json() == (await me(client, "bd_unknown")).json()
    assert await user_count(sessionmaker) == before
    assert (await alice.get("/api/v1/users/me")).status_code == 200
    page = await client.get("/sign-in")
    assert page.status_code == 200 and "sso-sign-in" not in page.text
    r = await client.get("/api/v1/session/oidc/start", follow_redirects=False)
    assert r.status_code == 303 and "sso_error=off" in r.headers["location"]


def test_an_issuer_without_an_audience_refuses_to_start() -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db", oidc_issuer="https://idp.example")
    with pytest.raises(ValueError, match="BATCH_OIDC_AUDIENCE"):
        create_app(settings)


async def test_the_cli_takes_a_jwt_as_its_token(
    openid_provider: OpenIdProvider, live_server: LiveServer
) -> None:
    openid_provider.set_account("hana", name="Hana")
    token = (await openid_provider.tokens("hana")).access_token
    r = await batchd(live_server.url, token, "batch", "list", "--json")  # BATCHD_TOKEN
    assert r.code == 0, r.err
    assert r.json["total"] == 0
    r = await batchd(live_server.url, None, "batch", "list", "--token", token)
    assert r.code == 0, r.err
    r = await batchd(live_server.url, token[:-4] + "AAAA", "batch", "list")
    assert r.code == 3 and INVALID in r.err


# --------------------------------------------------------------------------- the console


async def console_sign_in(
    p: OpenIdProvider, http: httpx.AsyncClient, base: str, sub: str
) -> httpx.Response:
    """Click 'Sign in with …' and log in at the provider, as a browser would; the
    sign-in page batchd lands on afterwards."""
    r = await http.get(f"{base}/api/v1/session/oidc/start?next=/batches")
    assert r.status_code == 303, r.text
    location = await p.sign_in_at_provider(http, r.headers["location"], sub)
    assert location.startswith(f"{base}/api/v1/session/oidc/callback?"), location
    r = await http.get(location)
    assert r.status_code == 303, r.text
    return await http.get(urljoin(base, r.headers["location"]))


async def session_refused(base: str, cookie: str) -> bool:
    """Whether a copy of an old ``batchd_session`` cookie, sent again, is refused (401)."""
    async with httpx.AsyncClient(cookies={"batchd_session": cookie}) as replay:
        return (await replay.get(f"{base}/api/v1/users/me")).status_code == 401


async def test_console_code_flow_signs_in_and_out_over_http(
    openid_provider: OpenIdProvider, live_server: LiveServer
) -> None:
    openid_provider.set_account("ivy", name="Ivy", batchd_role="admin", department_id=3)
    base = live_server.url
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{base}/sign-in")
        assert 'id="sso-sign-in"' in page.text and "Sign in with 127.0.0.1" in page.text
        landed = await console_sign_in(openid_provider, http, base, "ivy")
        # The session cookie is SameSite=Strict: the sign-in page moves on by script,
        # or (as here, an HTTP client sends it anyway) straight to the next page.
        assert landed.status_code in (200, 303)
        batches = await http.get(f"{base}/batches")
        assert batches.status_code == 200 and "All batches" in batches.text
        r = await http.get(f"{base}/api/v1/users/me")
        assert r.json()["name"] == "Ivy" and r.json()["role"] == "admin"
        old_cookie = http.cookies["batchd_session"]

        r = await http.delete(f"{base}/api/v1/session")
        assert r.status_code == 204
        assert (await http.get(f"{base}/api/v1/users/me")).status_code == 401
        # The old cookie, kept and sent again (a copy, a client that ignores the
        # deletion), is refused on the server: 401 on the API, sign-in for the console.
        async with httpx.AsyncClient(cookies={"batchd_session": old_cookie}) as replay:
            r = await replay.get(f"{base}/api/v1/users/me")
            assert r.status_code == 401, r.text
            r = await replay.get(f"{base}/batches")
            assert r.status_code in (302, 303, 307) and "/sign-in" in r.headers["location"]
        r = await http.get(f"{base}/sign-in")  # where the console goes after sign-out
        assert r.status_code == 303
        end = r.headers["location"]
        assert end.startswith(f"{openid_provider.issuer}/session/end?")
        query = parse_qs(urlsplit(end).query)
        assert query["post_logout_redirect_uri"] == [f"{base}/sign-in"]
        assert query["id_token_hint"][0].count(".") == 2
        confirm = await http.get(end)
        assert confirm.status_code == 200, confirm.text  # the provider accepted the hint
        form = re.search(r'<form[^>]*action="([^"]+)"', confirm.text)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text)
        assert form and xsrf, confirm.text
        r = await http.post(
            urljoin(end, form.group(1)), data={"xsrf": xsrf.group(1), "logout": "yes"}
        )
        assert r.status_code in (302, 303) and r.headers["location"].startswith(f"{base}/sign-in")
        again = await http.get(f"{base}/sign-in")
        assert again.status_code == 200 and 'id="sso-sign-in"' in again.text


async def test_a_callback_whose_id_token_has_another_nonce_is_refused(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The provider signs an ID token for a nonce this browser's flow never chose (an
    authorization request altered on its way, or a code and token injected from another
    flow): batchd refuses it and opens no session."""
    openid_provider.set_account("nora", name="Nora", batchd_role="admin")
    base = live_server.url
    before = await user_count(sessionmaker)
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{base}/api/v1/session/oidc/start?next=/batches")
        location = r.headers["location"]
        query = parse_qs(urlsplit(location).query)
        altered = location.replace(f"nonce={query['nonce'][0]}", "nonce=chosen-by-someone-else", 1)
        assert altered != location
        back = await openid_provider.sign_in_at_provider(http, altered, "nora")
        assert back.startswith(f"{base}/api/v1/session/oidc/callback?"), back
        r = await http.get(back)
        assert r.status_code == 303 and "sso_error=token" in r.headers["location"]
        page = await http.get(urljoin(base, r.headers["location"]))
        assert "could not be verified" in page.text
        assert (await http.get(f"{base}/api/v1/users/me")).status_code == 401
        assert "batchd_session" not in http.cookies
    assert await user_count(sessionmaker) == before


@pytest.mark.parametrize("settings_overrides", ["no end session"], indirect=True)
async def test_without_an_end_session_endpoint_sign_out_ends_here(
    provider_without_end_session: OpenIdProvider, live_server: LiveServer
) -> None:
    p = provider_without_end_session
    p.set_account("omar", name="Omar", batchd_role="user")
    base = live_server.url
    async with httpx.AsyncClient() as http:
        metadata = (await http.get(f"{p.issuer}/.well-known/openid-configuration")).json()
        assert "end_session_endpoint" not in metadata
        await console_sign_in(p, http, base, "omar")
        assert (await http.get(f"{base}/api/v1/users/me")).json()["name"] == "Omar"
        old_cookie = http.cookies["batchd_session"]
        assert (await http.delete(f"{base}/api/v1/session")).status_code == 204
        r = await http.get(f"{base}/sign-in")  # where the console goes after sign-out
        assert r.status_code == 303 and r.headers["location"] == "/sign-in"
        page = await http.get(f"{base}/sign-in")
        assert page.status_code == 200 and 'id="sso-sign-in"' in page.text
        assert "batchd_oidc_logout" not in http.cookies
        assert await session_refused(base, old_cookie)


async def test_a_token_sign_in_drops_the_providers_hint(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A token sign-in that replaces a provider session: signing out of it later stays
    here (no trip to the provider's sign-out with a stale ID token)."""
    openid_provider.set_account("quinn", name="Quinn")
    async with sessionmaker() as session:
        _user, bd_token = await create_user(session, "Service Sam")
        await session.commit()
    base = live_server.url
    async with httpx.AsyncClient() as http:
        await console_sign_in(openid_provider, http, base, "quinn")
        assert "batchd_oidc_hint" in http.cookies
        r = await http.post(f"{base}/api/v1/session", json={"token": bd_token})
        assert r.status_code == 200, r.text
        assert "batchd_oidc_hint" not in http.cookies
        assert (await http.get(f"{base}/api/v1/users/me")).json()["name"] == "Service Sam"
        assert (await http.delete(f"{base}/api/v1/session")).status_code == 204
        page = await http.get(f"{base}/sign-in")
        assert page.status_code == 200  # not a redirect to the provider's sign-out


async def test_a_console_session_ends_when_its_id_token_expires(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The provider's ID token decides the role for as long as it lives, not the 12 h
    of BATCH_SESSION_MAX_AGE: the session ends at its ``exp`` and the console asks to
    sign in again (which reads the role afresh)."""
    openid_provider.set_account("rita", name="Rita", batchd_role="admin", id_token_ttl=6)
    base = live_server.url
    async with httpx.AsyncClient() as http:
        await console_sign_in(openid_provider, http, base, "rita")
        id_token = http.cookies["batchd_oidc_hint"]
        exp = json.loads(base64.urlsafe_b64decode(id_token.split(".")[1] + "==="))["exp"]
        async with sessionmaker() as session:
            rows = (await session.scalars(select(BrowserSession))).all()
        assert [row.expires_at for row in rows] == [datetime.fromtimestamp(exp, UTC)]

        async def status() -> int:
            return (await http.get(f"{base}/api/v1/users/me")).status_code

        await eventually(
            status, "the session ends at the ID token's exp", until=lambda code: code == 401
        )
        assert datetime.now(UTC).timestamp() >= exp
        r = await http.get(f"{base}/api/v1/users/me")
        assert r.json()["detail"] == "Your session has ended: sign in again."
        r = await http.get(f"{base}/batches")
        assert r.status_code in (302, 303, 307) and "/sign-in" in r.headers["location"]


async def follow_silently(p: OpenIdProvider, http: httpx.AsyncClient, location: str) -> str:
    """Follow the provider's redirects from ``location`` as a browser would, failing if
    it shows any page (a renewal must not ask the user anything); where it sends the
    browser back to."""
    assert "prompt=none" in location, location
    for _ in range(12):
        if not location.startswith(p.issuer):
            return location
        r = await http.get(location)
        assert r.status_code in (302, 303), (r.status_code, r.text[:300])
        location = urljoin(location, r.headers["location"])
    raise AssertionError("the provider kept redirecting")


async def expire_console_session(http: httpx.AsyncClient, base: str) -> None:
    """Wait (on the condition, not a clock) until the session's ID token has expired."""

    async def status() -> int:
        return (await http.get(f"{base}/api/v1/users/me")).status_code

    await eventually(status, "the session ends at the ID token's exp", until=lambda c: c == 401)


async def test_an_ended_console_session_is_renewed_through_the_provider_without_a_click(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The ID token expired, the provider's own session lives: the sign-in page sends
    the browser through the provider with ``prompt=none`` and it comes back signed in —
    with the role the provider says now (demoted meanwhile), in a new session."""
    openid_provider.set_account("sara", name="Sara", batchd_role="admin", id_token_ttl=3)
    base = live_server.url
    async with httpx.AsyncClient() as http:
        await console_sign_in(openid_provider, http, base, "sara")
        old_cookie = http.cookies["batchd_session"]
        await expire_console_session(http, base)
        openid_provider.set_account("sara", name="Sara", batchd_role="user")

        r = await http.get(f"{base}/batches")  # the console, as a browser opens it
        assert r.status_code == 303 and r.headers["location"].startswith("/sign-in?")
        r = await http.get(urljoin(base, r.headers["location"]))
        assert r.status_code == 303
        assert r.headers["location"].startswith("/api/v1/session/oidc/start?")
        r = await http.get(urljoin(base, r.headers["location"]))
        assert r.status_code == 303
        back = await follow_silently(openid_provider, http, r.headers["location"])
        assert back.startswith(f"{base}/api/v1/session/oidc/callback?code="), back
        r = await http.get(back)
        assert r.status_code == 303 and "sso=done" in r.headers["location"]
        assert "next=%2Fbatches" in r.headers["location"]

        me = await http.get(f"{base}/api/v1/users/me")
        assert me.status_code == 200 and me.json()["role"] == "user"
        assert http.cookies["batchd_session"] != old_cookie
        async with sessionmaker() as session:
            rows = (await session.scalars(select(BrowserSession))).all()
        assert len(rows) == 1 and rows[0].expires_at is not None
        assert await session_refused(base, old_cookie)


async def test_a_renewal_the_provider_refuses_ends_the_session_and_asks_to_sign_in(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """The user's session at the provider is gone too (another browser profile, signed
    out there): the renewal comes back refused, the old session is deleted, and the
    sign-in page asks as usual — once, not in a loop."""
    openid_provider.set_account("tom", name="Tom", batchd_role="user", id_token_ttl=3)
    base = live_server.url
    async with httpx.AsyncClient() as first:
        await console_sign_in(openid_provider, first, base, "tom")
        old_cookie = first.cookies["batchd_session"]
        await expire_console_session(first, base)
    async with httpx.AsyncClient(cookies={"batchd_session": old_cookie}) as http:
        r = await http.get(f"{base}/sign-in?next=/tasks")
        assert r.status_code == 303 and "silent=true" in r.headers["location"]
        r = await http.get(urljoin(base, r.headers["location"]))
        back = await follow_silently(openid_provider, http, r.headers["location"])
        assert back.startswith(f"{base}/api/v1/session/oidc/callback?"), back
        assert "error=login_required" in back
        r = await http.get(back)
        assert r.status_code == 303 and "sso_error=expired" in r.headers["location"]
        page = await http.get(urljoin(base, r.headers["location"]))
        assert page.status_code == 200
        assert "did not renew it" in page.text and "login_required" not in page.text
        async with sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(BrowserSession)) == 0
        again = await http.get(f"{base}/sign-in?next=/tasks")
        assert again.status_code == 200  # no second trip to the provider
    async with httpx.AsyncClient(cookies={"batchd_session": old_cookie}) as stale:
        assert (await stale.get(f"{base}/sign-in")).status_code == 200


@pytest.mark.parametrize(
    "settings_overrides", [{"oidc_display_name": "Acme <Login>"}], indirect=True
)
async def test_the_button_says_the_configured_display_name(client: httpx.AsyncClient) -> None:
    page = await client.get("/sign-in")
    assert page.status_code == 200
    assert "Sign in with Acme &lt;Login&gt;" in page.text
    assert "Sign in with 127.0.0.1" not in page.text


async def test_a_forged_or_refused_callback_shows_a_message(
    openid_provider: OpenIdProvider,
    live_server: LiveServer,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    base = live_server.url
    before = await user_count(sessionmaker)
    async with httpx.AsyncClient() as http:
        # A callback this browser never started (login CSRF): refused.
        r = await http.get(f"{base}/api/v1/session/oidc/callback?code=abc&state=xyz")
        assert r.status_code == 303 and "sso_error=state" in r.headers["location"]
        page = await http.get(urljoin(base, r.headers["location"]))
        assert page.status_code == 200 and "not from this browser" in page.text
        # Started here, but the state sent back is another one.
        r = await http.get(f"{base}/api/v1/session/oidc/start")
        state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
        r = await http.get(f"{base}/api/v1/session/oidc/callback?code=abc&state={state}x")
        assert "sso_error=state" in r.headers["location"]
        # The provider refused (the user cancelled).
        r = await http.get(f"{base}/api/v1/session/oidc/start")
        state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
        r = await http.get(f"{base}/api/v1/session/oidc/callback?error=access_denied&state={state}")
        page = await http.get(urljoin(base, r.headers["location"]))
        assert "did not sign you in" in page.text and "access_denied" not in page.text
        # An answer that names another issuer (RFC 9207 mix-up).
        r = await http.get(f"{base}/api/v1/session/oidc/start")
        state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
        r = await http.get(
            f"{base}/api/v1/session/oidc/callback?code=c&state={state}&iss=https://evil.example"
        )
        assert "sso_error=token" in r.headers["location"]
        # A right state with a code the provider never issued.
        r = await http.get(f"{base}/api/v1/session/oidc/start")
        state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
        r = await http.get(f"{base}/api/v1/session/oidc/callback?code=forged&state={state}")
        page = await http.get(urljoin(base, r.headers["location"]))
        assert "could not be verified" in page.text
    assert await user_count(sessionmaker) == before


async def test_with_the_provider_down_cached_keys_verify_and_sign_in_says_so(
    openid_provider: OpenIdProvider,
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    now = [1000.0]
    app.state.oidc = OidcProvider(openid_provider.issuer, clock=lambda: now[0])
    openid_provider.set_account("jack", name="Jack", batchd_role="admin")
    token = (await openid_provider.tokens("jack")).access_token
    assert (await me(client, token)).status_code == 200  # the keys are now cached
    openid_provider.stop()
    try:
        assert (await me(client, token)).status_code == 200
        other = openid_provider.sign(openid_provider.claims("kate"))  # same key, new user
        assert (await me(client, other)).json()["name"] == "Kate"
        # Past the keys' maximum age the refresh fails: the cached keys keep verifying.
        now[0] += 3601
        assert (await me(client, token)).status_code == 200
        before = await user_count(sessionmaker)
        # Discovery is cached for a minute; after that, sign-in start re-reads it.
        r = await client.get("/api/v1/session/oidc/start?next=/tasks")
        assert r.status_code == 303 and "sso_error=provider" in r.headers["location"]
        page = await client.get(r.headers["location"])
        assert page.status_code == 200
        assert "provider could not be reached" in page.text
        r = await client.get("/api/v1/session/oidc/start?next=/tasks")  # no new read
        assert "sso_error=provider" in r.headers["location"]
        # An unknown kid cannot be looked up: a 503 that says so, never a 500.
        now[0] += 61
        forged = openid_provider.sign(openid_provider.claims("kate"), kid="rotated-2")
        r = await me(client, forged)
        assert r.status_code == 503 and "provider cannot be reached" in r.json()["detail"]
        assert r.headers["retry-after"]
        r = await me(client, forged)  # within the minute: no new fetch, still a 503
        assert r.status_code == 503
        assert await user_count(sessionmaker) == before
    finally:
        openid_provider.start()


async def test_a_burst_of_sign_in_starts_reads_discovery_once_a_minute(
    openid_provider: OpenIdProvider, app: FastAPI, client: httpx.AsyncClient
) -> None:
    now = [1000.0]
    app.state.oidc = OidcProvider(openid_provider.issuer, clock=lambda: now[0])
    start = await openid_provider.discovery_requests()
    answers = await asyncio.gather(
        *(client.get("/api/v1/session/oidc/start?next=/tasks") for _ in range(100))
    )
    assert all(r.status_code == 303 for r in answers)
    assert all(r.headers["location"].startswith(openid_provider.issuer) for r in answers)
    assert await openid_provider.discovery_requests() == start + 1
    now[0] += 59
    await client.get("/api/v1/session/oidc/start")
    assert await openid_provider.discovery_requests() == start + 1
    now[0] += 2  # older than a minute: the next start re-reads it, once
    await asyncio.gather(*(client.get("/api/v1/session/oidc/start") for _ in range(10)))
    assert await openid_provider.discovery_requests() == start + 2


# --------------------------------------------------------------------------- Chromium


@pytest.fixture
def chromium_reason() -> Iterator[None]:
    """Skip without Chromium — but not in CI on the embedded default, where the
    browser flow must run (``.ci/run`` installs Chromium)."""
    from tests.conftest import ON_POSTGRES
    from tests.test_console import browser_skip_reason

    reason = browser_skip_reason()
    if reason:
        if ON_POSTGRES:
            pytest.skip(reason)
        missing_tool(reason)
    yield


async def test_console_sign_in_and_out_in_chromium(
    chromium_reason: None, openid_provider: OpenIdProvider, live_server: LiveServer
) -> None:
    from playwright.async_api import async_playwright

    from tests.test_console import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

    openid_provider.set_account("lena", name="Lena Browser", batchd_role="user")
    base = live_server.url
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{base}/tasks")
            await page.wait_for_url(re.compile(r"/sign-in\?next="))
            await page.click("#sso-sign-in")
            # The provider's pages load web fonts: wait for their DOM, not their fonts.
            await page.wait_for_url(
                re.compile(re.escape(openid_provider.issuer)), wait_until="domcontentloaded"
            )
            await page.fill("input[name=login]", "lena")
            await page.fill("input[name=password]", "any")
            await page.click("form:has(input[name=prompt][value=login]) button[type=submit]")
            await page.wait_for_url(f"{base}/tasks")
            assert await page.locator("#sign-out").is_visible()
            assert "Lena Browser" in await page.content()

            await page.click("#sign-out")
            await page.wait_for_url(
                re.compile(re.escape(openid_provider.issuer + "/session/end")),
                wait_until="domcontentloaded",
            )
            await page.click("button[name=logout][value=yes]")
            await page.wait_for_url(re.compile(re.escape(base) + r"/sign-in"))
            r = await page.request.get(f"{base}/api/v1/users/me")
            assert r.status == 401
            assert errors == []
        finally:
            await browser.close()


# --------------------------------------------------------------------------- algorithms


def keyed_provider(jwks: list[dict[str, Any]]) -> OidcProvider:
    """An ``OidcProvider`` whose discovery and JWKS are served from memory."""
    issuer = "https://idp.test"

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": issuer, "jwks_uri": f"{issuer}/jwks"})
        return httpx.Response(200, json={"keys": jwks})

    return OidcProvider(issuer, transport=httpx.MockTransport(answer))


async def test_each_asymmetric_algorithm_verifies_only_with_a_key_of_its_type() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    rsa_key, ec_key, ed_key = (
        new_key(),
        ec.generate_private_key(ec.SECP256R1()),
        (ed25519.Ed25519PrivateKey.generate()),
    )
    jwks = [
        {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa"},
        {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "ec"},
        {**json.loads(OKPAlgorithm.to_jwk(ed_key.public_key())), "kid": "ed"},
    ]
    provider = keyed_provider(jwks)
    now = int(time.time())
    claims = {"iss": "https://idp.test", "aud": "api", "sub": "s", "exp": now + 60}
    signed = {
        ("RS256", "rsa"): jwt_encode(claims, rsa_key, "RS256", "rsa"),
        ("PS256", "rsa"): jwt_encode(claims, rsa_key, "PS256", "rsa"),
        ("ES256", "ec"): jwt_encode(claims, ec_key, "ES256", "ec"),
        ("EdDSA", "ed"): jwt_encode(claims, ed_key, "EdDSA", "ed"),
    }
    for token in signed.values():
        assert (await provider.verify(token, audiences=["api"]))["sub"] == "s"
    # The same signatures presented under another key's id: refused.
    for (_alg, kid), token in signed.items():
        for other in {"rsa", "ec", "ed"} - {kid}:
            head, body, sig = token.split(".")
            header = json.loads(base64.urlsafe_b64decode(head + "=="))
            forged = b64(json.dumps({**header, "kid": other}).encode()) + f".{body}.{sig}"
            with pytest.raises(InvalidToken):
                await provider.verify(forged, audiences=["api"])
    for alg in ("HS256", "RS384", "ES512", "none"):
        head = b64(json.dumps({"alg": alg, "kid": "rsa"}).encode())
        with pytest.raises(InvalidToken):
            await provider.verify(f"{head}.{b64(b'{}')}.", audiences=["api"])


def jwt_encode(claims: dict[str, Any], key: Any, alg: str, kid: str) -> str:
    import jwt

    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_claims_map_to_role_department_and_name() -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db")
    role = [role_of({"batchd_role": v}, settings) for v in ("admin", "Admin", ["x", "admin"], 1)]
    assert role == ["admin", "user", "admin", "user"]
    assert role_of({}, settings) == "user"
    departments = [
        department_of({"department_id": v}, settings) for v in (7, "12", " 3 ", "x", True, 2**70)
    ]
    assert departments == [7, 12, 3, None, None, None]
    assert name_of({"sub": "s", "preferred_username": "pat"}, settings) == "pat"
    assert name_of({"sub": "s", "name": "  "}, settings) == "s"


async def test_cached_keys_are_refreshed_after_an_hour_and_kept_while_the_provider_is_down() -> (
    None
):
    key = new_key()
    jwks: list[dict[str, Any]] = [public_jwk(key, "k1")]
    fetches: list[str] = []
    down = [False]

    def answer(request: httpx.Request) -> httpx.Response:
        if down[0]:
            raise httpx.ConnectError("refused", request=request)
        fetches.append(request.url.path)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200, json={"issuer": "https://idp.test", "jwks_uri": "https://idp.test/jwks"}
            )
        return httpx.Response(200, json={"keys": jwks})

    now = [0.0]
    provider = OidcProvider(
        "https://idp.test", clock=lambda: now[0], transport=httpx.MockTransport(answer)
    )
    provider_claims = {"iss": "https://idp.test", "aud": "api", "sub": "s"}

    def token() -> str:
        claims = {**provider_claims, "exp": int(time.time()) + 300}
        return jwt_encode(claims, key, "RS256", "k1")

    assert (await provider.verify(token(), audiences=["api"]))["sub"] == "s"
    assert fetches.count("/jwks") == 1
    now[0] += 3599  # younger than an hour: no fetch
    await provider.verify(token(), audiences=["api"])
    assert fetches.count("/jwks") == 1
    now[0] += 2  # older: refreshed once on this use
    await asyncio.gather(*(provider.verify(token(), audiences=["api"]) for _ in range(10)))
    assert fetches.count("/jwks") == 2
    now[0] += 3601  # old again, and the provider is down: the cached key keeps verifying
    down[0] = True
    await provider.verify(token(), audiences=["api"])
    await provider.verify(token(), audiences=["api"])
    down[0] = False
    assert fetches.count("/jwks") == 2  # the failed try counted: none more this minute
    jwks.clear()  # the provider withdrew the key
    now[0] += 61
    with pytest.raises(InvalidToken):
        await provider.verify(token(), audiences=["api"])
    assert fetches.count("/jwks") == 3
    assert fetches.count("/.well-known/openid-configuration") == 1


def test_without_node_the_provider_tests_skip_locally_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="node/npm are not installed"):
        require_node()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_node()
