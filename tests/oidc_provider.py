"""A real OpenID provider for the single-sign-on tests: panva's ``oidc-provider`` (pinned
in ``tests/node_tools/package.json``, installed there with ``npm ci`` when missing),
run by ``tests/oidc/provider.mjs`` on a free loopback port.

The test owns the provider's signing key (so it can also forge tokens with it where a
case needs a token the provider would never issue) and its accounts file (so it can
change a user's role there and have the next token say so). Tokens the provider does
issue are obtained as a client would: the authorization-code flow with PKCE, driven
with httpx through the provider's development login page.

Without Node the provider tests skip with the reason — except under ``CI=true``, where
they fail: a skip in CI would hide them (``.ci/run`` installs Node and runs ``npm ci``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import free_port
from tests.tooling import missing_tool

HERE = Path(__file__).parent
TOOLS = HERE / "node_tools"
SCRIPT = HERE / "oidc" / "provider.mjs"
AUDIENCE = "https://batchd.test/api"
CLIENT_ID = "batchd-console"
CLIENT_SECRET = "console-secret-for-tests"
KID = "provider-key-1"
TOKEN_REDIRECT = "http://127.0.0.1:9/api/v1/session/oidc/callback"
"""Where tokens fetched by the tests are 'sent' (never contacted: the code is read from
the redirect). The console client is a native one, so any loopback port matches."""


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Tokens:
    access_token: str
    id_token: str


@dataclass
class OpenIdProvider:
    """The running provider, its key and its accounts."""

    workdir: Path
    port: int = field(default_factory=free_port)
    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    end_session: bool = True
    """False: the provider offers no ``end_session_endpoint`` (no RP-initiated logout)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accounts_file(self) -> Path:
        return self.workdir / "accounts.json"

    def write_config(self) -> Path:
        private: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key))
        private.pop("key_ops", None)  # PyJWT writes ["sign"]; the provider also verifies
        config = {
            "port": self.port,
            "issuer": self.issuer,
            "audience": AUDIENCE,
            "accounts_file": str(self.accounts_file),
            "end_session": self.end_session,
            "jwks": {"keys": [{**private, "kid": KID}]},
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "application_type": "native",
                    "redirect_uris": ["http://127.0.0.1/api/v1/session/oidc/callback"],
                    "post_logout_redirect_uris": ["http://127.0.0.1/sign-in"],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                }
            ],
        }
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config))
        if not self.accounts_file.exists():
            self.accounts_file.write_text("{}")
        return path

    def start(self) -> None:
        node = shutil.which("node")
        assert node is not None
        config = self.write_config()
        log = (self.workdir / "provider.log").open("ab")
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip() == b"ready":
                    return
                if not line:
                    break
        self.stop()
        raise RuntimeError(f"the OpenID provider did not start: {self.workdir}/provider.log")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def set_account(self, sub: str, **claims: Any) -> None:
        """Create or change an account at the provider (its next token says so)."""
        accounts = json.loads(self.accounts_file.read_text())
        accounts[sub] = claims
        self.accounts_file.write_text(json.dumps(accounts))

    async def jwks_requests(self) -> int:
        """How many times the JWKS was fetched since the provider started."""
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{self.issuer}/__jwks_count")
        return int(r.json()["count"])

    async def discovery_requests(self) -> int:
        """How many times the discovery document was fetched since the provider started."""
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{self.issuer}/__discovery_count")
        return int(r.json()["count"])

    async def tokens(self, sub: str) -> Tokens:
        """An access token (a JWT for batchd's audience) and an ID token for ``sub``,
        by the code flow with PKCE, signing in at the provider's login page."""
        verifier = secrets.token_urlsafe(48)
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        state = secrets.token_urlsafe(12)
        query = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": TOKEN_REDIRECT,
            "scope": "openid profile",
            "state": state,
            "nonce": secrets.token_urlsafe(12),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "prompt": "login",
        }
        async with httpx.AsyncClient(base_url=self.issuer) as http:
            location = f"{self.issuer}/auth?{urlencode(query)}"
            location = await self.sign_in_at_provider(http, location, sub)
            assert location.startswith(TOKEN_REDIRECT), location
            params = parse_qs(urlsplit(location).query)
            assert params["state"] == [state], params
            r = await http.post(
                "/token",
                data={
                    "grant_type": "authorization_code",
                    "code": params["code"][0],
                    "redirect_uri": TOKEN_REDIRECT,
                    "code_verifier": verifier,
                },
                auth=(CLIENT_ID, CLIENT_SECRET),
            )
            assert r.status_code == 200, r.text
            body = r.json()
        assert body["access_token"].count(".") == 2, "the access token is not a JWT"
        return Tokens(body["access_token"], body["id_token"])

    async def sign_in_at_provider(self, http: httpx.AsyncClient, location: str, sub: str) -> str:
        """Follow the provider's redirects from ``location``, filling its login form as
        ``sub``, until it sends the browser elsewhere; that URL."""
        for _ in range(12):
            if not location.startswith(self.issuer):
                return location
            r = await http.get(location)
            if r.status_code == 200:
                action = re.search(r'<form[^>]*action="([^"]+)"', r.text)
                prompt = re.search(r'name="prompt" value="([^"]+)"', r.text)
                assert action and prompt, r.text
                fields = {"prompt": prompt.group(1)}  # login (the console sees no consent page)
                if prompt.group(1) == "login":
                    fields.update(login=sub, password="any")
                r = await http.post(urljoin(location, action.group(1)), data=fields)
            assert r.status_code in (302, 303), (r.status_code, r.text)
            location = urljoin(location, r.headers["location"])
        raise AssertionError("the provider kept redirecting")

    def sign(
        self,
        claims: dict[str, Any],
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = KID,
        alg: str = "RS256",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with the provider's own key (or ``key``): what the provider
        would never issue, for the hostile cases. ``kid`` None: no key id in the header;
        ``headers``: more header fields (an embedded ``jwk``, …)."""
        header = {**({"kid": kid} if kid is not None else {}), **(headers or {})}
        return jwt.encode(claims, key or self.key, algorithm=alg, headers=header)

    def claims(self, subject: str, /, **changes: Any) -> dict[str, Any]:
        """Claims of a token that would be accepted; ``changes`` spoil one of them."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 300,
            "name": subject.title(),
        }
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}


def node_skip_reason() -> str | None:
    """Why the OpenID provider cannot run here (None: it can)."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return "node/npm are not installed (they run the OpenID provider, oidc-provider)"
    version = subprocess.run(
        [node, "-p", "process.versions.node"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    ).stdout.strip()
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < 20:
        return f"node {version or '?'} is too old for oidc-provider (20 or later)"
    return None


def require_node() -> None:
    """Skip with the reason when Node cannot run the provider — or, in CI, fail: a skip
    there would hide the single-sign-on tests."""
    reason = node_skip_reason()
    if reason is not None:
        missing_tool(f"{reason} (.ci/run installs nodejs and npm, then npm ci in tests/node_tools)")


def install_provider() -> None:
    """``npm ci`` in tests/node_tools when oidc-provider is not there yet."""
    if (TOOLS / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm is not None
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=TOOLS,
        check=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def openid_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProvider]:
    """One provider for the whole module (starting node is the slow part)."""
    require_node()
    install_provider()
    provider = OpenIdProvider(tmp_path_factory.mktemp("oidc"))
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def provider_without_end_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OpenIdProvider]:
    """A second provider whose discovery names no ``end_session_endpoint``."""
    require_node()
    install_provider()
    provider = OpenIdProvider(tmp_path_factory.mktemp("oidc-plain"), end_session=False)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
