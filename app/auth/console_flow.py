"""The console's sign-in with the provider: the authorization-code flow with PKCE (S256),
``state`` and ``nonce``.

Why the flow's secrets live in a cookie: ``state``, ``nonce`` and the PKCE verifier are
random per attempt, kept in one HttpOnly cookie bound to this browser (path-limited to
the callback, ten minutes), and compared in constant time at the callback. A forged
callback (login CSRF) carries a ``state`` the victim's cookie does not hold; a stolen
code cannot be redeemed without the verifier, which never left the browser's cookie
and batchd. Nothing is kept on the server, so any API process can finish a flow
another started.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from app.auth.oidc import InvalidToken, OidcProvider, ProviderDown
from app.config import Settings

FLOW_COOKIE = "batchd_oidc_flow"
FLOW_MAX_AGE_S = 600
"""A sign-in at the provider must finish within this long."""
HINT_COOKIE = "batchd_oidc_hint"
"""The ID token of an SSO browser session, for the provider's sign-out
(``id_token_hint``); HttpOnly, sent only to ``/api/v1/session``."""
CALLBACK_PATH = "/api/v1/session/oidc/callback"
SCOPES = "openid profile"


class FlowError(Exception):
    """A callback batchd refuses; ``code`` picks the sentence the sign-in page shows."""

    def __init__(self, code: str, reason: str = "") -> None:
        super().__init__(reason or code)
        self.code = code
        self.reason = reason or code


MESSAGES = {
    "state": "That sign-in link is not from this browser or has expired: please sign in again.",
    "denied": "The sign-in provider did not sign you in (cancelled or refused).",
    "provider": "The sign-in provider could not be reached: try again shortly, or sign in "
    "with your token.",
    "token": "The sign-in provider's answer could not be verified: please sign in again.",
    "off": "Single sign-on is not configured on this server.",
    "expired": "Your sign-in has ended and the sign-in provider did not renew it: please "
    "sign in again.",
}
"""Every sentence the console may show after a failed provider sign-in (the sign-in
page looks the code up here; nothing the provider sent is echoed)."""


@dataclass(frozen=True)
class Flow:
    state: str
    nonce: str
    verifier: str
    next: str
    silent: bool = False
    """A renewal (``prompt=none``): the provider answers without showing anything —
    signed in again if its own session lives, an error otherwise."""

    def cookie(self) -> str:
        target = _b64(self.next.encode()).decode()
        return ".".join(
            (self.state, self.nonce, self.verifier, target, "1" if self.silent else "0")
        )

    @classmethod
    def from_cookie(cls, value: str) -> Flow | None:
        parts = value.split(".")
        if len(parts) != 5 or parts[4] not in ("0", "1"):
            return None
        try:
            target = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)).decode()
        except ValueError:
            return None
        return cls(parts[0], parts[1], parts[2], target, silent=parts[4] == "1")

    @classmethod
    def new(cls, next_path: str, *, silent: bool = False) -> Flow:
        return cls(
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(48),
            next_path,
            silent,
        )

    @property
    def challenge(self) -> str:
        return _b64(hashlib.sha256(self.verifier.encode()).digest()).decode()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def authorization_url(
    metadata: dict[str, Any], settings: Settings, flow: Flow, redirect: str
) -> str:
    endpoint = metadata.get("authorization_endpoint")
    if not isinstance(endpoint, str):
        raise ProviderDown()
    query = {
        "response_type": "code",
        "client_id": settings.oidc_client_id or "",
        "redirect_uri": redirect,
        "scope": SCOPES,
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": flow.challenge,
        "code_challenge_method": "S256",
    }
    if flow.silent:
        query["prompt"] = "none"
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)


def basic_auth(client_id: str, secret: str) -> str:
    """``client_secret_basic`` (RFC 6749 2.3.1: each part form-encoded, then Basic)."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def check_state(flow: Flow | None, state: str | None) -> Flow:
    if flow is None or not state or not hmac.compare_digest(flow.state, state):
        raise FlowError("state", "state missing or not this browser's")
    return flow


async def redeem(
    provider: OidcProvider, settings: Settings, flow: Flow, code: str, redirect: str
) -> tuple[dict[str, Any], str]:
    """Exchange ``code`` at the token endpoint (PKCE verifier; the client secret by
    HTTP Basic when one is configured) and verify the ID token it returns (nonce, aud =
    the client id). The ID token's claims and the ID token itself."""
    try:
        metadata = await provider.discover()
    except ProviderDown as exc:
        raise FlowError("provider", "discovery failed") from exc
    endpoint = metadata.get("token_endpoint")
    if not isinstance(endpoint, str):
        raise FlowError("provider", "no token endpoint")
    client_id = settings.oidc_client_id or ""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "code_verifier": flow.verifier,
    }
    headers: dict[str, str] = {}
    if settings.oidc_client_secret:
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            headers["Authorization"] = basic_auth(client_id, settings.oidc_client_secret)
        else:
            form["client_secret"] = settings.oidc_client_secret
            form["client_id"] = client_id
    else:
        form["client_id"] = client_id
    try:
        async with provider.client() as http:
            response = await http.post(endpoint, data=form, headers=headers)
    except httpx.HTTPError as exc:
        raise FlowError("provider", f"token endpoint: {exc!r}") from exc
    if response.status_code >= 500:
        raise FlowError("provider", f"token endpoint answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        raise FlowError("token", f"token endpoint answered {response.status_code}")
    id_token = body.get("id_token")
    if not isinstance(id_token, str):
        raise FlowError("token", "no id_token in the token response")
    try:
        claims = await provider.verify(id_token, audiences=[client_id], nonce=flow.nonce)
    except InvalidToken as exc:
        raise FlowError("token", exc.reason) from exc
    except ProviderDown as exc:
        raise FlowError("provider", "keys unavailable") from exc
    return claims, id_token


def end_session_url(
    metadata: dict[str, Any] | None, settings: Settings, id_token: str | None, after: str
) -> str | None:
    """Where the browser goes to sign out at the provider too (RP-initiated logout), or
    None when the provider offers no ``end_session_endpoint``."""
    endpoint = (metadata or {}).get("end_session_endpoint")
    if not isinstance(endpoint, str):
        return None
    query = {"post_logout_redirect_uri": after, "client_id": settings.oidc_client_id or ""}
    if id_token:
        query["id_token_hint"] = id_token
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)
